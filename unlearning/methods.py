"""Every registered unlearning method: a new one is a file in this folder and one import here."""

from dpbench.unlearning import finetune, ga, gradiff, idk, kl, noop, npo, retrain, siu  # noqa: F401

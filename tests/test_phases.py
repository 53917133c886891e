"""The run's checks read no weights: the `--nproc` launcher and `dpbench audit` check every input
as a run does (the model's trainable coordinates and vocabulary from its weightless skeleton)
and leave the loading to the processes that train or score."""

from __future__ import annotations

import pytest

from dpbench import phases
from dpbench.errors import DpbenchError
from dpbench.spec import RunSpec


def short_spec(checkpoint, **changes) -> RunSpec:
    return RunSpec.from_dict(
        {
            "method": "dpsgd",
            "model": str(checkpoint),
            "eval_limit": 8,
            "attacks": ["loss", "reference", "lira", "rmia"],
            "training": {"steps": 2, "batch_size": 8, "n_train": 16},
            "audit": {"references": 2, "reference_steps": 2, "canaries": 8},
        }
    ).replace(**changes)


def test_the_checks_read_no_weights_and_see_the_models_shape(checkpoint, tmp_path, monkeypatch):
    from transformers import AutoModelForImageTextToText

    from dpbench import distributed, runner
    from dpbench.models.registry import load_model, load_skeleton

    counts = {}
    for lora in (None, "r=2,alpha=4"):  # the skeleton's trainable coordinates are the loaded model's
        spec = short_spec(checkpoint, lora=lora)
        skeleton, loaded = load_skeleton(spec.model), load_model(spec.model, "cpu")
        for m in (skeleton, loaded):
            phases.setup_parameters(m, spec)
        assert skeleton.parameter_counts() == loaded.parameter_counts()
        counts[lora] = loaded.parameter_counts()
    assert counts[None][1] > counts["r=2,alpha=4"][1]

    def no_loading(*args, **kwargs):
        raise AssertionError("a check read the model's weights")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", no_loading)
    checked = phases.check(short_spec(checkpoint))
    assert checked.canaries is not None and len(checked.fit) == 16 + int(checked.canaries.included.sum())
    trainable = counts["r=2,alpha=4"][1]
    too_many = {"lora": "r=2,alpha=4", "audit.canary_placement": "model", "audit.gradient_canaries": trainable + 2}
    with pytest.raises(DpbenchError, match=f"exceeds the model's {trainable} trainable coordinates"):
        phases.check(short_spec(checkpoint, **too_many))

    launched = []  # `--nproc`: the launcher checks as one process would, and leaves the loading to the ranks
    monkeypatch.setattr(distributed, "launch", lambda nproc, args: launched.append(nproc) or 0)
    runner.launch(short_spec(checkpoint, **{"training.nproc": 2}), tmp_path)
    assert launched == [2]

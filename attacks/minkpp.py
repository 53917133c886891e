import numpy as np

from dpbench.attacks.base import ATTACKS, Attack
from dpbench.attacks.mink import lowest_fraction_mean


@ATTACKS.register("mink++")
class MinKPlusPlusAttack(Attack):
    """Min-K%++ (Zhang et al. 2024): token log-probs standardised by the model's own next-token
    distribution (mean and std of log p), then the mean of the lowest 20 %."""

    reads_token_stats = True

    def score(self, signals):
        return np.array(
            [lowest_fraction_mean((s["logp"] - s["mu"]) / s["sigma"]) for s in signals.token_stats("target")]
        )

import numpy as np

from dpbench.attacks.base import ATTACKS, Attack

K = 0.2


def lowest_fraction_mean(values: np.ndarray, k: float = K) -> float:
    n = max(1, int(np.ceil(k * len(values))))
    return float(np.sort(values)[:n].mean())


@ATTACKS.register("mink")
class MinKAttack(Attack):
    """Min-K% prob (Shi et al. 2024): mean log-probability of the k = 20 % least likely text tokens."""

    reads_token_stats = True

    def score(self, signals):
        return np.array([lowest_fraction_mean(s["logp"]) for s in signals.token_stats("target")])

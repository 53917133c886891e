"""RMIA (Zarifzadeh et al. 2024, "Low-Cost High-Power Membership Inference Attacks"), offline.

The likelihood ratio Pr(x|θ)/Pr(x) of an example is compared with that of population samples
z: an example is a member when its ratio beats most z's. Dividing by each z's own ratio
cancels what the target model does to all data alike (e.g. a generally lower loss after
fine-tuning), which a fixed threshold on Pr(x|θ)/Pr(x) would not.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from dpbench.attacks.base import ATTACKS, Attack

# Offline, every reference is OUT for x, so Pr(x) = (Pr_OUT + Pr_IN)/2 is approximated with
# Pr_IN ≈ a·Pr_OUT + (1 − a) (the paper's offline rule). a is estimated from the references'
# own IN and OUT data (`estimate_offline_a`); 0.3, the authors' Privacy Meter default, is
# only the fallback. It matters: with small probabilities (sequences) and a = 0.3 the
# constant (1 − a)/2 swamps Pr_OUT and the calibration per example is lost.
OFFLINE_A = 0.3
GAMMA = 1.0


def estimate_offline_a(probs: ArrayLike, included: ArrayLike) -> float:
    """a from reference models' probabilities on their own training data (IN) and on
    held-out data from the same pool (OUT): the model 1 − Pr_IN = a·(1 − Pr_OUT) gives
    a = mean(1 − Pr over IN) / mean(1 − Pr over OUT), clipped to [0, 1]. The pool is split
    at random, so IN and OUT examples are alike but for training."""
    p = np.asarray(probs, dtype=float)
    inc = np.asarray(included, dtype=bool)
    if p.shape != inc.shape or inc.all() or not inc.any():
        raise ValueError("need IN and OUT probabilities of the same shape")
    out_error = float(np.mean(1.0 - p[~inc]))
    if out_error <= 0.0:
        return 1.0
    return float(np.clip(np.mean(1.0 - p[inc]) / out_error, 0.0, 1.0))


def marginal_probability(reference_probs: ArrayLike, a: float = OFFLINE_A) -> np.ndarray:
    """Pr(x) from (K, n) OUT reference probabilities: ((1 + a)·mean Pr_OUT + (1 − a)) / 2."""
    out = np.atleast_2d(np.asarray(reference_probs, dtype=float)).mean(axis=0)
    return ((1.0 + a) * out + (1.0 - a)) / 2.0


def rmia_offline(
    target_x: ArrayLike,
    references_x: ArrayLike,
    target_z: ArrayLike,
    references_z: ArrayLike,
    a: float = OFFLINE_A,
    gamma: float = GAMMA,
) -> np.ndarray:
    """Per example x: the fraction of population samples z with LR(x, z) > γ, where
    LR(x, z) = [Pr(x|θ) / Pr(x)] / [Pr(z|θ) / Pr(z)].

    Arguments are probabilities in [0, 1]: the target's (n,) on x and (m,) on z, the
    references' (K, n) and (K, m).
    """
    ratio_x = np.asarray(target_x, dtype=float) / marginal_probability(references_x, a)
    ratio_z = np.asarray(target_z, dtype=float) / marginal_probability(references_z, a)
    if ratio_z.size == 0:
        raise ValueError("RMIA needs at least one population sample z")
    return (ratio_x[:, None] > gamma * ratio_z[None, :]).mean(axis=1)


@ATTACKS.register("rmia")
class RmiaAttack(Attack):
    """RMIA (Zarifzadeh et al. 2024), offline: the fraction of population samples whose
    likelihood ratio Pr(·|target)/Pr(·) the example's own ratio beats; Pr(·) from reference
    models. Probability of a target = exp(−mean token NLL)."""

    needs_references = True

    def score(self, signals):
        ref_x, target_z, ref_z = signals.reference_losses()
        a = signals.references.offline_a
        return rmia_offline(
            np.exp(-signals.loss("target")),
            np.exp(-ref_x),
            np.exp(-target_z),
            np.exp(-ref_z),
            a=OFFLINE_A if a is None else a,
        )

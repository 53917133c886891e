"""Offline LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles").

Offline: the reference models never trained on the audited examples, so only the OUT
distribution of each example's statistic is known; a member is an example whose statistic
under the target model is improbably high for an OUT model (a one-sided test, which the
paper found stronger than a two-sided one in the offline setting).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from dpbench.attacks.base import ATTACKS, Attack

# Carlini et al. found per-example variances need many reference models (their cut-off was
# 64); with fewer, one variance shared by all examples is the better estimate.
PER_EXAMPLE_VARIANCE_FROM = 64
MIN_SIGMA = 1e-6  # identical reference models would otherwise give a zero variance


def confidence_logit(loss: ArrayLike) -> np.ndarray:
    """log(p / (1 − p)) with p = exp(−loss): LiRA's statistic, close to Gaussian where p is not.

    Computed as −loss − log(−expm1(−loss)) so that p ≈ 1 (loss ≈ 0) does not round to ∞.
    """
    loss = np.maximum(np.asarray(loss, dtype=float), 1e-12)
    return -loss - np.log(-np.expm1(-loss))


def lira_offline(target: ArrayLike, references: ArrayLike) -> np.ndarray:
    """Per-example z = (target − μ_out) / σ_out, with N(μ_out, σ²_out) fitted on `references`.

    `target`: (n,) statistics of the target model; `references`: (K, n) of K OUT models.
    The one-sided test's p-value is P[Z > target] = 1 − Φ(z), so z ranks examples exactly as
    the likelihood of membership does, and unlike Φ or its logarithm it never saturates:
    a target far below or above every reference (|z| > 38) still keeps its rank.
    σ is per example from 64 references on; below, the within-example variance pooled over
    examples (K ≥ 2), or with one reference the spread over examples (Carlini et al.'s
    "global variance").
    """
    t = np.asarray(target, dtype=float)
    r = np.atleast_2d(np.asarray(references, dtype=float))
    if r.shape[1] != t.size:
        raise ValueError(f"{r.shape[1]} reference statistics per model for {t.size} examples")
    k = r.shape[0]
    mu = r.mean(axis=0)
    if k >= PER_EXAMPLE_VARIANCE_FROM:
        sigma = r.std(axis=0, ddof=1)
    elif k >= 2:
        sigma = np.full(t.size, np.sqrt(r.var(axis=0, ddof=1).mean()))
    else:
        sigma = np.full(t.size, r.std())
    return (t - mu) / np.maximum(sigma, MIN_SIGMA)


@ATTACKS.register("lira")
class LiraAttack(Attack):
    """Offline LiRA (Carlini et al. 2022): how far the target's confidence logit on an example
    lies above a Gaussian fitted to reference models that never saw it (one-sided)."""

    needs_references = True

    def score(self, signals):
        ref_losses, _, _ = signals.reference_losses()
        return lira_offline(confidence_logit(signals.loss("target")), confidence_logit(ref_losses))

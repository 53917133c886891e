"""The one-run audit's ε lower bound from an f-DP analysis (Mahloujifar et al. 2024,
"Auditing f-Differential Privacy in One Run", arXiv:2410.22235).

Steinke et al.'s bound (`canary.one_run_epsilon_lower_bound`) tests "(ε, δ)-DP" with the
tail of a binomial. This one tests the tighter claim the mechanism really makes: that it is
as private as the Gaussian mechanism that is exactly (ε, δ)-DP (μ-GDP with μ = 1/σ(ε, δ)).
Its test follows the paper's recursion over the guesses ("audit_rh_with_cap"): starting from
the observed right and wrong guesses scaled by the significance level, it bounds how many
guesses an adversary facing that trade-off curve could get right; the claim is rejected when
the observed guesses exceed it. Checked against jax_privacy's `_epsilon_one_run_fdp` in
`tests/test_canary_audit.py`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import optimize, stats

from dpbench.attacks.tradeoff import SIGMA_FLOOR, blow_up_inverse, epsilon_bounds
from dpbench.privacy import PRV_FAILURES


@functools.lru_cache(maxsize=4096)
def gaussian_sigma(epsilon: float, delta: float) -> float:
    """σ at which the Gaussian mechanism of sensitivity 1 is exactly (ε, δ)-DP (Balle & Wang
    2018): δ(σ) = Φ(1/2σ − εσ) − e^ε Φ(−1/2σ − εσ), decreasing in σ."""
    if delta >= 1:
        return 0.0

    def excess(sigma: float) -> float:
        a, b = 1 / (2 * sigma), epsilon * sigma
        return stats.norm.cdf(a - b) - math.exp(epsilon) * stats.norm.cdf(-a - b) - delta

    lo, hi = 1e-6, 1.0
    while excess(hi) > 0:
        hi *= 2
    if excess(lo) < 0:
        return 0.0
    return float(optimize.brentq(excess, lo, hi, xtol=1e-12))


def _rejects(epsilon: float, m: int, guesses: int, correct: int, significance: float, delta: float) -> float:
    """> 0 when `correct` of `guesses` right guesses on m canaries reject the Gaussian claim."""
    sigma = gaussian_sigma(epsilon, delta)
    if sigma == 0:
        return -1.0  # a mechanism with no noise can explain any guesses
    mu = 1 / sigma
    return _rejects_curve(lambda x: float(stats.norm.cdf(stats.norm.ppf(x) - mu)), m, guesses, correct, significance)


def fdp_epsilon_lower_bound(m: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
    """Largest ε whose Gaussian (f-DP) claim `correct` of `guesses` right guesses reject; 0.0 if none."""
    if not (0 <= correct <= guesses <= m):
        raise ValueError(f"need 0 <= correct <= guesses <= m, got {correct}, {guesses}, {m}")
    significance = 1 - confidence
    if guesses == 0 or _rejects(1e-9, m, guesses, correct, significance, delta) <= 0:
        return 0.0
    lo, hi = 1e-9, 1.0
    while _rejects(hi, m, guesses, correct, significance, delta) > 0:
        lo, hi = hi, 2 * hi
    return float(optimize.brentq(lambda e: _rejects(e, m, guesses, correct, significance, delta), lo, hi, xtol=1e-6))


def _rejects_curve(blow_up_inverse, m: int, guesses: int, correct: int, significance: float) -> float:
    """> 0 when `correct` of `guesses` right "in" guesses on m canaries reject a mechanism whose
    blow-up inverse is `blow_up_inverse` (Mahloujifar et al.'s "audit_rh_with_cap", one-sided)."""
    right, wrong = significance * correct / m, significance * (guesses - correct) / m
    for i in range(correct - 1, -1, -1):
        wrong_new = max(wrong, blow_up_inverse(right))
        if wrong_new == wrong:
            break
        right = min(right + i / (guesses - i) * (wrong_new - wrong), 1.0)
        wrong = wrong_new
    return right + wrong - guesses / m


def rejects_composed(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    delta: float,
    m: int,
    guesses: int,
    correct: int,
    confidence: float = 0.95,
) -> bool:
    """Do the guesses reject "each canary is protected as by `steps` subsampled Gaussian releases
    at this σ and rate"?"""
    try:
        inverse = blow_up_inverse(noise_multiplier, sample_rate, steps, delta)
    except PRV_FAILURES:
        return False  # Opacus' PRV cannot discretise this claim (a tiny σ at a large rate): not tested
    return guesses > 0 and _rejects_curve(inverse, m, guesses, correct, 1 - confidence) > 0


# σ on a fixed log grid (0.5 % apart): the blow-up curves are cached by σ, so the guess-count
# simulation and the real scores share most of them
SIGMA_GRID = tuple(float(x) for x in np.geomspace(SIGMA_FLOOR, 200.0, 1396))


def fdp_composed_bound(
    sample_rate: float, steps: int, delta: float, m: int, guesses: int, correct: int, confidence: float = 0.95
) -> tuple[float, float]:
    """(σ̂, ε̂): the smallest noise multiplier on `SIGMA_GRID` whose composed subsampled-Gaussian
    claim (the run's own rate and steps) the guesses reject, and the ε that σ̂ spends at δ by the
    lower end of the PRV's discretisation (σ̂ = inf and ε̂ = 0 when none is rejected). Rejection is
    monotone in σ (more noise, a stronger claim, easier to reject), so bisection finds it. Below
    SIGMA_FLOOR the PRV's grid outgrows memory: a rejection there reads as ε̂ = ε(SIGMA_FLOOR)."""

    def rejected(i: int) -> bool:
        return rejects_composed(SIGMA_GRID[i], sample_rate, steps, delta, m, guesses, correct, confidence)

    lo, hi = 0, len(SIGMA_GRID) - 1
    if guesses == 0 or not rejected(hi):
        return math.inf, 0.0
    if not rejected(lo):
        while hi - lo > 1:  # invariant: the claim at hi is rejected, at lo it is not
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if rejected(mid) else (mid, hi)
    else:
        hi = lo
    sigma = SIGMA_GRID[hi]
    bounds = epsilon_bounds(sigma, sample_rate, steps, delta)
    return sigma, bounds[0] if bounds is not None else 0.0  # the PRV's lower end: a lower bound stays one

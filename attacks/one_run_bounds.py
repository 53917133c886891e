"""The one-run audit's ε lower bounds: from guesses about randomly included canaries, made
after a single training run, two ways.

Why one run: the membership audit in `metrics` needs many examples per side; these need a single
training run and no held-out calibration split. Each of ``m`` canaries is included in training
independently with probability ½. After one training run the auditor guesses "in" (+1), "out"
(−1) or abstains (0) for each canary; ``r`` guesses are made and ``v`` are right.

Steinke, Nasr & Jagielski (2023), "Privacy Auditing with One (1) Training Run", NeurIPS 2023,
arXiv:2305.08846 (`one_run_epsilon_lower_bound`). Under (ε, δ)-DP the number of correct guesses
is stochastically dominated by Binomial(r, e^ε / (1 + e^ε)) up to a δ term (the paper's main
theorem), which gives a p-value for "the run is (ε, δ)-DP"; the reported bound is the largest ε
whose p-value is below 1 − confidence. The p-value follows the authors' reference code printed
in the paper's appendix (`p_value_DP_audit` / `get_eps_audit`; also transcribed in
github.com/zj-jayzhang/one_round_auditing, src/dp_audit.py). Differences: the inner loop is
vectorised with numpy and the 30-step bisection is replaced by `scipy.optimize.brentq`.

Mahloujifar et al. (2024), "Auditing f-Differential Privacy in One Run", arXiv:2410.22235
(`fdp_epsilon_lower_bound`, `fdp_composed_bound`). Steinke et al.'s bound tests "(ε, δ)-DP" with
the tail of a binomial. This one tests the tighter claim the mechanism really makes: that it is
as private as the Gaussian mechanism that is exactly (ε, δ)-DP (μ-GDP with μ = 1/σ(ε, δ)), or,
composed, as the run's own subsampled Gaussian releases. Its test follows the paper's recursion
over the guesses ("audit_rh_with_cap"): starting from the observed right and wrong guesses
scaled by the significance level, it bounds how many guesses an adversary facing that trade-off
curve could get right; the claim is rejected when the observed guesses exceed it. Checked
against jax_privacy's `_epsilon_one_run_fdp` in `tests/test_whitebox_audit.py`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special, stats

from dpbench.attacks.metrics import CONFIDENCE
from dpbench.attacks.tradeoff import SIGMA_FLOOR, blow_up_inverse, epsilon_bounds
from dpbench.privacy import PRV_FAILURES

__all__ = [
    "count_correct",
    "fdp_composed_bound",
    "fdp_epsilon_lower_bound",
    "gaussian_sigma",
    "guess_from_scores",
    "one_run_epsilon_lower_bound",
    "p_value",
    "rejects_composed",
]


# Steinke et al.: (ε, δ)-DP against a binomial tail


def p_value(m: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """P[≥ ``correct`` right out of ``guesses``] if training were (ε, δ)-DP (an upper bound).

    β = P[Binomial(r, q) ≥ v] with q = e^ε/(1+e^ε), the accuracy of ε-randomised response;
    the δ term adds 2·m·δ·max_i P[v−i ≤ Binomial(r, q) < v] / i, as in the reference code.
    """
    r, v = guesses, correct
    q = float(special.expit(epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))
    alpha = 0.0
    if delta > 0 and v > 0:
        i = np.arange(1, v + 1)
        alpha = max(0.0, float(np.max(np.cumsum(stats.binom.pmf(v - i, r, q)) / i)))
    return min(beta + alpha * delta * 2 * m, 1.0)


def one_run_epsilon_lower_bound(
    m: int, guesses: int, correct: int, delta: float, confidence: float = CONFIDENCE
) -> float:
    """Largest ε such that ``correct`` of ``guesses`` right guesses rejects (ε, δ)-DP.

    ``m``: canaries (each included with probability ½); ``guesses``: non-abstaining guesses
    r; ``correct``: right guesses v. Returns 0.0 when the guesses are no better than chance
    at this confidence. Even perfect guessing cannot exceed ln(q/(1−q)) with
    q = (1 − confidence)^(1/r) (δ = 0): the bound is limited by r, not only by accuracy.
    """
    if not (0 <= correct <= guesses <= m):
        raise ValueError(f"need 0 <= correct <= guesses <= m, got {correct}, {guesses}, {m}")
    if not 0.0 <= delta <= 1.0:
        raise ValueError(f"delta must be in [0, 1], got {delta}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    target = 1.0 - confidence

    def excess(eps: float) -> float:
        return p_value(m, guesses, correct, eps, delta) - target

    if excess(0.0) >= 0:  # not even ε = 0 is rejected
        return 0.0
    hi = 1.0
    while excess(hi) < 0:  # p-value -> 1 as ε -> ∞ (q -> 1) whenever correct <= guesses
        hi *= 2.0
    return float(optimize.brentq(excess, 0.0, hi, xtol=1e-12, rtol=1e-12))


def guess_from_scores(scores: ArrayLike, k_pos: int, k_neg: int) -> np.ndarray:
    """+1 for the ``k_pos`` highest scores, −1 for the ``k_neg`` lowest, 0 (abstain) elsewhere.

    Abstaining on the uncertain middle is what makes the one-run bound strong: only
    confident guesses count, and r = k_pos + k_neg. Ties are broken by position (stable sort)
    so the result is deterministic.
    """
    s = np.asarray(scores, dtype=float).ravel()
    if k_pos < 0 or k_neg < 0 or k_pos + k_neg > s.size:
        raise ValueError(f"need k_pos, k_neg >= 0 and k_pos + k_neg <= {s.size}")
    order = np.argsort(s, kind="stable")
    out = np.zeros(s.size, dtype=np.int8)
    out[order[:k_neg]] = -1
    if k_pos:
        out[order[s.size - k_pos :]] = 1
    return out


def count_correct(guesses: ArrayLike, is_member: ArrayLike) -> tuple[int, int]:
    """(r, v): how many non-abstaining guesses there are and how many of them are right."""
    g = np.asarray(guesses).ravel()
    truth = np.where(np.asarray(is_member, dtype=bool).ravel(), 1, -1)
    if g.shape != truth.shape:
        raise ValueError(f"{g.size} guesses for {truth.size} canaries")
    made = g != 0
    return int(made.sum()), int((g[made] == truth[made]).sum())


# Mahloujifar et al.: the Gaussian (f-DP) claim


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


def fdp_epsilon_lower_bound(m: int, guesses: int, correct: int, delta: float, confidence: float = CONFIDENCE) -> float:
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
    confidence: float = CONFIDENCE,
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
    sample_rate: float, steps: int, delta: float, m: int, guesses: int, correct: int, confidence: float = CONFIDENCE
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

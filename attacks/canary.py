"""One-run privacy audit: an ε lower bound from guesses about randomly included canaries.

Steinke, Nasr & Jagielski (2023), "Privacy Auditing with One (1) Training Run", NeurIPS 2023,
arXiv:2305.08846. Each of ``m`` canaries is included in training independently with
probability ½. After one training run the auditor guesses "in" (+1), "out" (−1) or abstains
(0) for each canary; ``r`` guesses are made and ``v`` are right. Under (ε, δ)-DP the number of
correct guesses is stochastically dominated by Binomial(r, e^ε / (1 + e^ε)) up to a δ term
(the paper's main theorem), which gives a p-value for "the run is (ε, δ)-DP"; the
reported bound is the largest ε whose p-value is below 1 − confidence.

Why it is here: the membership audit in `metrics` needs many examples per side; this one
needs a single training run and no held-out calibration split.

The p-value follows the authors' reference code printed in the paper's appendix
(`p_value_DP_audit` / `get_eps_audit`; also transcribed in github.com/zj-jayzhang/
one_round_auditing, src/dp_audit.py). Differences: the inner loop is vectorised with numpy
and the 30-step bisection is replaced by `scipy.optimize.brentq`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special, stats

__all__ = ["count_correct", "guess_from_scores", "one_run_epsilon_lower_bound", "p_value"]


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


def one_run_epsilon_lower_bound(m: int, guesses: int, correct: int, delta: float, confidence: float = 0.95) -> float:
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

"""Audit metrics: turn member / non-member attack scores into ROC figures and an ε lower bound.

Everything here is model-independent and pure (numbers in, numbers out), so it can be
tested against hand-computed cases. Convention throughout: a *higher* score means "more
likely a member".

The empirical ε is a *sound* statistical lower bound, not a point estimate: if the training
really is (ε, δ)-DP, the reported ε̂ exceeds ε with probability at most ``1 - confidence``.
An ε̂ above the accounted ε therefore signals a bug, while an ε̂ below it proves nothing
about privacy (the attack may just be weak).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = [
    "EpsilonBound",
    "attack_summary",
    "clopper_pearson",
    "clopper_pearson_upper",
    "empirical_epsilon",
    "roc_summary",
]

DEFAULT_FPRS: tuple[float, ...] = (0.001, 0.01, 0.05)
# every audit's confidence: where ε is true, an audit's ε̂ exceeds it with probability at most 1 - CONFIDENCE
CONFIDENCE = 0.95


def _scores(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten both score arrays (non-empty, finite floats)."""
    out = []
    for name, s in (("member_scores", member_scores), ("nonmember_scores", nonmember_scores)):
        a = np.asarray(s, dtype=float).ravel()
        if a.size == 0:
            raise ValueError(f"{name} is empty")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or infinite values")
        out.append(a)
    return out[0], out[1]


def roc_summary(
    member_scores: ArrayLike, nonmember_scores: ArrayLike, fprs: Sequence[float] = DEFAULT_FPRS
) -> dict[str, Any]:
    """AUC, TPR at fixed low FPRs and best balanced accuracy of a score-threshold attack.

    TPR at FPR ``f`` is read off the empirical ROC at its largest point with FPR <= f (no
    interpolation), which is what an attacker who must keep FPR under ``f`` on this data can
    achieve. Low-FPR TPR is the figure that matters for privacy (Carlini et al. 2022): an
    attack that confidently identifies a few members is a real leak even at AUC ≈ 0.5.
    """
    m, n = _scores(member_scores, nonmember_scores)
    y = np.concatenate([np.ones(m.size), np.zeros(n.size)])
    s = np.concatenate([m, n])
    # drop_intermediate=False: dropping collinear points would lose ROC points on tied
    # diagonals and under-report TPR at a fixed FPR.
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    at = []
    for f in fprs:
        ok = fpr <= f  # the (0, 0) point always qualifies
        at.append({"fpr": float(f), "tpr": float(tpr[ok].max())})
    return {
        "auc": float(roc_auc_score(y, s)),
        "tpr_at_fpr": at,
        "balanced_accuracy": float(np.max((tpr + 1.0 - fpr) / 2.0)),
    }


def _check_counts(k: int, n: int, alpha: float) -> None:
    if not (0 <= k <= n) or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided exact (Clopper–Pearson) ``1 - alpha`` interval for a binomial proportion k/n.

    Exact rather than normal-approximation because audits live in the tails (0 or n errors
    out of a few hundred), where the normal approximation is badly anti-conservative.
    """
    _check_counts(k, n, alpha)
    lower = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2.0, k, n - k + 1))
    upper = 1.0 if k == n else float(stats.beta.ppf(1.0 - alpha / 2.0, k + 1, n - k))
    return lower, upper


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided exact upper ``1 - alpha`` confidence bound for a binomial proportion k/n."""
    _check_counts(k, n, alpha)
    return 1.0 if k == n else float(stats.beta.ppf(1.0 - alpha, k + 1, n - k))


def _cp_upper_vec(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Vectorised `clopper_pearson_upper` over many counts k (same n)."""
    k = np.asarray(k)
    out = np.ones(k.shape, dtype=float)
    inner = k < n
    out[inner] = stats.beta.ppf(1.0 - alpha, k[inner] + 1, n - k[inner])
    return out


def _epsilon_from_rates(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
    """ε implied by error rates: max(0, ln((1-δ-FPR)/FNR), ln((1-δ-FNR)/FPR)).

    Any (ε, δ)-DP mechanism satisfies FPR + e^ε·FNR >= 1 - δ and vice versa (Kairouz et al.
    2015), so upper bounds on the error rates give a lower bound on ε. A non-positive
    numerator gives no evidence and contributes 0.
    """
    fpr = np.asarray(fpr, dtype=float)
    fnr = np.asarray(fnr, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where((1.0 - delta - fpr > 0) & (fnr > 0), np.log((1.0 - delta - fpr) / fnr), 0.0)
        b = np.where((1.0 - delta - fnr > 0) & (fpr > 0), np.log((1.0 - delta - fnr) / fpr), 0.0)
    # Both rates come from Clopper-Pearson upper bounds, which are > 0, so no division by 0
    # survives; zero-rate plug-ins (which would mean ε = ∞) never reach this function.
    return np.maximum(0.0, np.maximum(a, b))


@dataclass(frozen=True)
class EpsilonBound:
    """A one-sided lower confidence bound on ε from a threshold attack.

    ``threshold``: scores >= threshold are called "member" (chosen on the calibration half).
    ``fpr_upper`` / ``fnr_upper``: Clopper–Pearson upper bounds on the evaluation half.
    ``n_calibration`` / ``n_evaluation``: examples (members + non-members) in each half.
    """

    epsilon: float
    threshold: float
    fpr_upper: float
    fnr_upper: float
    n_calibration: int
    n_evaluation: int


def _candidate_thresholds(cal_scores: np.ndarray) -> np.ndarray:
    """Midpoints between consecutive distinct calibration scores (one value if all tie).

    Midpoints, not the scores themselves, so that a threshold separating the calibration
    data keeps a margin on both sides for the unseen evaluation data.
    """
    u = np.unique(cal_scores)
    return u if u.size == 1 else (u[:-1] + u[1:]) / 2.0


def _counts_at(sorted_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many scores are >= each threshold."""
    return sorted_scores.size - np.searchsorted(sorted_scores, thresholds, side="left")


def empirical_epsilon(
    member_scores: ArrayLike, nonmember_scores: ArrayLike, delta: float, confidence: float = CONFIDENCE, seed: int = 0
) -> EpsilonBound:
    """Lower confidence bound on ε from member / non-member scores (Jagielski et al. 2020).

    Each class is shuffled with ``seed`` and split in half. The threshold is chosen on the
    first half and the error rates are bounded on the second, so the choice cannot overfit
    the counts that the bound rests on: the bound holds at ``confidence`` (Bonferroni: each of
    FPR̄, FNR̄ is a one-sided Clopper–Pearson bound at (1 - confidence) / 2).

    The threshold maximises the same bound computed on the calibration half. A raw plug-in
    ln((1-δ-FPR)/FNR) is infinite whenever a tail holds no error, so it would pick extreme
    thresholds that isolate one or two examples; the Clopper–Pearson form prices that in.
    """
    m, n = _scores(member_scores, nonmember_scores)
    if m.size < 2 or n.size < 2:
        raise ValueError("need at least 2 members and 2 non-members to split for calibration")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = (1.0 - confidence) / 2.0  # Bonferroni over FPR̄ and FNR̄

    rng = np.random.default_rng(seed)
    m = rng.permutation(m)
    n = rng.permutation(n)
    m_cal, m_ev = np.sort(m[: m.size // 2]), np.sort(m[m.size // 2 :])
    n_cal, n_ev = np.sort(n[: n.size // 2]), np.sort(n[n.size // 2 :])

    # Calibration: evaluate the bound at every candidate threshold, keep the best.
    ts = _candidate_thresholds(np.concatenate([m_cal, n_cal]))
    fp = _counts_at(n_cal, ts)  # non-members called member
    fn = m_cal.size - _counts_at(m_cal, ts)  # members called non-member
    eps_cal = _epsilon_from_rates(_cp_upper_vec(fp, n_cal.size, alpha), _cp_upper_vec(fn, m_cal.size, alpha), delta)
    t = float(ts[int(np.argmax(eps_cal))])

    # Evaluation: fresh counts at the fixed threshold.
    fp_ev = int(_counts_at(n_ev, np.array([t]))[0])
    fn_ev = int(m_ev.size - _counts_at(m_ev, np.array([t]))[0])
    fpr_u = clopper_pearson_upper(fp_ev, n_ev.size, alpha)
    fnr_u = clopper_pearson_upper(fn_ev, m_ev.size, alpha)
    eps = float(_epsilon_from_rates(np.array(fpr_u), np.array(fnr_u), delta))
    return EpsilonBound(
        epsilon=eps,
        threshold=t,
        fpr_upper=fpr_u,
        fnr_upper=fnr_u,
        n_calibration=int(m_cal.size + n_cal.size),
        n_evaluation=int(m_ev.size + n_ev.size),
    )


def attack_summary(
    member_scores: ArrayLike,
    nonmember_scores: ArrayLike,
    delta: float,
    confidence: float = CONFIDENCE,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """One attack's audit figures, shaped like the result schema's ``$defs/attack_result``."""
    roc = roc_summary(member_scores, nonmember_scores)
    bound = empirical_epsilon(member_scores, nonmember_scores, delta, confidence, seed=seed)
    return {**roc, "epsilon_lower_bound": bound.epsilon, "threshold": bound.threshold}

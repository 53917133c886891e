"""Does unlearning unlearn? Per-example membership statistics over shadow pairs (numbers in,
numbers out; `dpbench.unlearning.shadows` makes the pairs).

Shadow pair k: a model trained on D_k ∪ F and then unlearned (F forgotten), and a model retrained
on D_k alone, D_k a random half of the pool. For every forgotten example x, K scores under each
hypothesis ("unlearned", "never trained").

  U-LiRA (Hayes et al. 2024)  a per-example likelihood-ratio test of the two Gaussians fitted to x's
                              scores, leave-one-pair-out: AUC, TPR at low FPR, ε̂ lower bound (95 %);
                              "not unlearned" when a one-sided Wilcoxon test over the forgotten
                              examples (`not_unlearned_p_value`) rejects "no different" at 95 %
  per-example ε (the NeurIPS 2023 unlearning challenge's estimator) from the K against K scores of
                              each x: a plug-in point estimate (error rates floored at 1/(2K))
  PrivLeak (MUSE)             (AUC_unlearned - AUC_retrained) / AUC_retrained of a population loss
                              attack (forget set against non-members), both measured here
  group privacy               what an (ε, δ)-DP parent already guarantees for k deleted examples:
                              (kε, k·e^((k-1)ε)·δ)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from dpbench.attacks.lira import confidence_logit
from dpbench.attacks.metrics import CONFIDENCE, _epsilon_from_rates, attack_summary, roc_summary

VAR_FLOOR = 1e-6


def _gauss_logpdf(x, mu, var):
    return -0.5 * (np.log(2 * np.pi * var) + (x - mu) ** 2 / var)


def ulira_scores(unlearned: np.ndarray, retrained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-pair-out log likelihood ratios "unlearned" : "never trained", for every pair's
    unlearned (positives) and retrained (negatives) model on every forgotten example.

    `unlearned`, `retrained`: (K, n) scores. Per-example means; with few pairs the variance is
    pooled over examples (LiRA's global-variance variant), which needs far fewer shadow models."""
    u, r = np.asarray(unlearned, float), np.asarray(retrained, float)
    k = u.shape[0]
    if k < 3:
        raise ValueError("U-LiRA needs at least 3 shadow pairs (leave one out, fit on the rest)")
    pos, neg = [], []
    for j in range(k):
        rest = np.arange(k) != j
        mu_u, mu_r = u[rest].mean(0), r[rest].mean(0)
        var_u = max(float(u[rest].var(0, ddof=1).mean()), VAR_FLOOR)
        var_r = max(float(r[rest].var(0, ddof=1).mean()), VAR_FLOOR)
        for x, out in ((u[j], pos), (r[j], neg)):
            out.append(_gauss_logpdf(x, mu_u, var_u) - _gauss_logpdf(x, mu_r, var_r))
    return np.concatenate(pos), np.concatenate(neg)


def not_unlearned_p_value(pos: np.ndarray, neg: np.ndarray, n: int) -> float:
    """Is the unlearned model told apart from retrained ones at all? One value per forgotten
    example (its unlearned less its retrained log likelihood ratios, averaged over the pairs), then
    a one-sided Wilcoxon signed-rank test over the examples: one example's K scores, and one pair's
    n scores, are not independent draws, so a test over all K·n scores would read too small a p.
    The ε̂ bound answers "how much", and needs far more scores to leave 0."""
    d = (np.asarray(pos, float) - np.asarray(neg, float)).reshape(-1, n).mean(axis=0)
    if not np.any(d):
        return 1.0  # the same scores on both sides: retrain's own shadows
    return float(stats.wilcoxon(d, alternative="greater").pvalue)


def per_example_epsilon(unlearned: np.ndarray, retrained: np.ndarray, delta: float) -> np.ndarray:
    """Each forgotten example's ε point estimate from its K unlearned and K retrained scores: the
    best threshold's max(ln((1-δ-FPR)/FNR), ln((1-δ-FNR)/FPR)), rates floored at 1/(2K) (a point
    estimate, not a bound: with K pairs no rate below 1/K can be seen)."""
    u, r = np.asarray(unlearned, float), np.asarray(retrained, float)
    k = u.shape[0]
    floor = 1.0 / (2 * k)
    out = []
    for i in range(u.shape[1]):
        ts = np.unique(np.concatenate([u[:, i], r[:, i]]))
        fnr = np.array([(u[:, i] < t).mean() for t in ts])  # unlearned called "never trained"
        fpr = np.array([(r[:, i] >= t).mean() for t in ts])  # retrained called "unlearned"
        eps = _epsilon_from_rates(np.maximum(fpr, floor), np.maximum(fnr, floor), delta)
        out.append(float(eps.max()))
    return np.array(out)


def privleak(auc_unlearned: float, auc_retrained: float) -> float:
    return (auc_unlearned - auc_retrained) / auc_retrained


def group_privacy(epsilon: float, delta: float, k: int) -> dict[str, Any]:
    """The (ε, δ) an (ε, δ)-DP parent guarantees for a group of k examples; δ's term may exceed 1
    (then the bound says nothing)."""
    eps_k = k * epsilon
    log_delta_k = math.log(k) + (k - 1) * epsilon + math.log(delta) if delta > 0 else -math.inf
    delta_k = math.exp(log_delta_k) if log_delta_k < 700 else math.inf
    return {"k": k, "epsilon": eps_k, "delta": delta_k if math.isfinite(delta_k) else None, "vacuous": delta_k >= 1}


def summarise(
    forget_unlearned: np.ndarray,
    forget_retrained: np.ndarray,
    nonmember_unlearned: np.ndarray,
    nonmember_retrained: np.ndarray,
    delta: float,
) -> dict[str, Any]:
    """Every figure of the unlearning audit from (K, n) per-example losses."""
    su, sr = confidence_logit(forget_unlearned), confidence_logit(forget_retrained)
    pos, neg = ulira_scores(su, sr)
    ulira = attack_summary(pos, neg, delta, CONFIDENCE)
    p_value = not_unlearned_p_value(pos, neg, su.shape[1])
    per_ex = per_example_epsilon(su, sr, delta)

    def population(forget, nonmember) -> dict[str, Any]:
        s_in, s_out = confidence_logit(forget), confidence_logit(nonmember)
        aucs = [roc_summary(a, b)["auc"] for a, b in zip(s_in, s_out)]
        pooled = attack_summary(s_in.ravel(), s_out.ravel(), delta, CONFIDENCE)
        return {"auc": float(np.mean(aucs)), "epsilon_lower_bound": pooled["epsilon_lower_bound"]}

    pop_u = population(forget_unlearned, nonmember_unlearned)
    pop_r = population(forget_retrained, nonmember_retrained)
    return {
        "confidence": CONFIDENCE,
        "ulira": {**{k: ulira[k] for k in ("auc", "tpr_at_fpr", "epsilon_lower_bound")}, "p_value": p_value},
        "per_example_epsilon": {"mean": float(per_ex.mean()), "max": float(per_ex.max()), "estimator": "point"},
        "population_loss": {"unlearned": pop_u, "retrained": pop_r},
        "privleak": privleak(pop_u["auc"], pop_r["auc"]),
        "not_unlearned": p_value < 1 - CONFIDENCE,
    }

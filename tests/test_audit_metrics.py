"""Audit maths against hand-computed cases and independent closed forms."""

from __future__ import annotations

import json
import math
from importlib import resources

import jsonschema
import numpy as np
import pytest
from scipy import stats

from dpbench.attacks.metrics import (
    attack_summary,
    clopper_pearson,
    clopper_pearson_upper,
    empirical_epsilon,
    roc_summary,
)
from dpbench.attacks.one_run_bounds import count_correct, guess_from_scores, one_run_epsilon_lower_bound

# ---------------------------------------------------------------- ROC summary


def test_auc_hand_case():
    # Pairs (member > non-member): 0.8>0.6, 0.8>0.2, 0.4>0.2 but not 0.4>0.6 -> 3/4.
    s = roc_summary([0.8, 0.4], [0.6, 0.2])
    assert s["auc"] == pytest.approx(0.75)
    # Best threshold 0.8: TPR 1/2, TNR 1 -> 0.75; threshold 0.4: TPR 1, TNR 1/2 -> 0.75.
    assert s["balanced_accuracy"] == pytest.approx(0.75)


def test_auc_counts_ties_as_half():
    assert roc_summary([1.0], [1.0])["auc"] == pytest.approx(0.5)


def test_tpr_at_fpr_hand_case():
    # 4 members, 10 non-members. The highest non-member (0.95) sits between members.
    members = [0.99, 0.97, 0.90, 0.10]
    nonmembers = [0.95, 0.5, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.12, 0.11]
    s = roc_summary(members, nonmembers, fprs=(0.0, 0.05, 0.1, 0.2))
    got = {p["fpr"]: p["tpr"] for p in s["tpr_at_fpr"]}
    # FPR 0 allows threshold 0.97 (2 members above 0.95); FPR 0.05 < 1/10 still 0 false
    # positives; FPR 0.1 allows one false positive -> 3 members (threshold 0.90); FPR 0.2
    # allows two -> still 3 (the last member, 0.10, is below every non-member).
    assert got == {0.0: 0.5, 0.05: 0.5, 0.1: 0.75, 0.2: 0.75}
    assert [p["fpr"] for p in s["tpr_at_fpr"]] == [0.0, 0.05, 0.1, 0.2]


def test_tpr_at_fpr_keeps_points_on_tied_diagonals():
    # Tied scores make collinear ROC points; dropping them would report TPR 0 at FPR 0.5.
    s = roc_summary([3, 2, 1], [3, 2, 1], fprs=(0.34, 0.67))
    assert [p["tpr"] for p in s["tpr_at_fpr"]] == pytest.approx([1 / 3, 2 / 3])


def test_roc_rejects_nan_and_empty():
    with pytest.raises(ValueError):
        roc_summary([float("nan")], [0.0])
    with pytest.raises(ValueError):
        roc_summary([], [0.0])


# ---------------------------------------------------------------- Clopper-Pearson


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (17, 250)])
def test_clopper_pearson_matches_beta_quantiles(k, n):
    alpha = 0.05
    lo, hi = clopper_pearson(k, n, alpha)
    assert lo == (0.0 if k == 0 else pytest.approx(stats.beta.ppf(alpha / 2, k, n - k + 1)))
    assert hi == (1.0 if k == n else pytest.approx(stats.beta.ppf(1 - alpha / 2, k + 1, n - k)))
    up = clopper_pearson_upper(k, n, alpha)
    assert up == (1.0 if k == n else pytest.approx(stats.beta.ppf(1 - alpha, k + 1, n - k)))
    assert lo <= k / n <= up <= hi


def test_clopper_pearson_zero_successes_closed_form():
    # P[Bin(n, p) = 0] = (1-p)^n = alpha  =>  p = 1 - alpha^(1/n).
    assert clopper_pearson_upper(0, 50, 0.05) == pytest.approx(1 - 0.05 ** (1 / 50))
    assert clopper_pearson(0, 50, 0.05)[1] == pytest.approx(1 - 0.025 ** (1 / 50))


def test_clopper_pearson_rejects_bad_counts():
    for k, n, a in [(-1, 5, 0.05), (6, 5, 0.05), (0, 0, 0.05), (1, 5, 0.0)]:
        with pytest.raises(ValueError):
            clopper_pearson(k, n, a)


# ---------------------------------------------------------------- empirical epsilon


def test_identical_scores_give_zero_epsilon():
    x = np.random.default_rng(3).normal(size=400)
    b = empirical_epsilon(x, x.copy(), delta=1e-5, seed=0)
    assert b.epsilon == 0.0
    assert (b.n_calibration, b.n_evaluation) == (400, 400)


def test_same_distribution_gives_zero_epsilon():
    rng = np.random.default_rng(4)
    b = empirical_epsilon(rng.normal(size=500), rng.normal(size=500), delta=1e-5, seed=0)
    assert b.epsilon == 0.0


def test_perfect_separation_gives_exactly_the_count_bound():
    n_per_class = 200  # 100 per class in the evaluation half
    rng = np.random.default_rng(5)
    members = rng.uniform(10, 11, n_per_class)
    nonmembers = rng.uniform(0, 1, n_per_class)
    delta, confidence = 1e-5, 0.95
    b = empirical_epsilon(members, nonmembers, delta=delta, confidence=confidence)
    # Independent closed form: 0 errors of 100 at one-sided level (1-conf)/2 each.
    u = 1 - ((1 - confidence) / 2) ** (1 / 100)
    expected = math.log((1 - delta - u) / u)
    assert b.fpr_upper == pytest.approx(u, rel=1e-9)
    assert b.fnr_upper == pytest.approx(u, rel=1e-9)
    assert b.epsilon == pytest.approx(expected, rel=1e-9)
    assert 1 < b.threshold < 10


def test_epsilon_is_sound_under_the_null():
    # No leakage: a sound 95% bound may be positive in at most ~5% of trials.
    rng = np.random.default_rng(6)
    positive = sum(
        empirical_epsilon(rng.normal(size=100), rng.normal(size=100), 1e-5, seed=i).epsilon > 0 for i in range(200)
    )
    assert positive <= 20  # 5% of 200 is 10; binomial 99.9% quantile is ~21


def test_epsilon_grows_with_separation_and_seed_is_deterministic():
    rng = np.random.default_rng(7)
    non = rng.normal(size=1000)
    noise = rng.normal(size=1000)
    eps = [empirical_epsilon(noise + mu, non, 1e-5).epsilon for mu in (0.0, 1.0, 2.0, 4.0)]
    assert eps[0] == 0.0 and eps[1] < eps[2] < eps[3]
    a, b = (empirical_epsilon(noise + 1, non, 1e-5, seed=1) for _ in range(2))
    assert a == b


def test_empirical_epsilon_rejects_tiny_inputs():
    with pytest.raises(ValueError):
        empirical_epsilon([1.0], [0.0, 0.1], 1e-5)


def test_attack_summary_matches_schema():
    path = resources.files("dpbench").joinpath("schema/result.schema.json")
    schema = json.loads(path.read_text())
    sub = {"$defs": schema["$defs"], "$ref": "#/$defs/attack_result"}
    rng = np.random.default_rng(8)
    s = attack_summary(rng.normal(1, 1, 300), rng.normal(0, 1, 300), delta=1e-5)
    jsonschema.Draft202012Validator(sub).validate(s)
    json.dumps(s)  # plain floats only
    assert set(s) == {"auc", "tpr_at_fpr", "balanced_accuracy", "epsilon_lower_bound", "threshold"}
    assert [p["fpr"] for p in s["tpr_at_fpr"]] == [0.001, 0.01, 0.05]


# ---------------------------------------------------------------- one-run canary audit


def _reference_eps(m, r, v, delta, p):
    """Straight transcription of the paper's appendix code (loop + 30-step bisection)."""

    def pval(eps):
        q = 1 / (1 + math.exp(-eps))
        beta = stats.binom.sf(v - 1, r, q)
        alpha, total = 0.0, 0.0
        for i in range(1, v + 1):
            total += stats.binom.pmf(v - i, r, q)
            if total > i * alpha:
                alpha = total / i
        return min(beta + alpha * delta * 2 * m, 1)

    lo, hi = 0.0, 1.0
    while pval(hi) < p:
        hi += 1
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if pval(mid) < p else (lo, mid)
    return lo


@pytest.mark.parametrize("m,r,v,delta", [(1000, 600, 600, 1e-5), (1000, 100, 90, 1e-5), (200, 50, 40, 0.0)])
def test_one_run_matches_reference_code(m, r, v, delta):
    expected = _reference_eps(m, r, v, delta, 0.05)
    assert one_run_epsilon_lower_bound(m, r, v, delta) == pytest.approx(expected, abs=1e-7)


def test_one_run_random_guessing_gives_zero():
    assert one_run_epsilon_lower_bound(1000, 200, 100, 1e-5) == 0.0
    rng = np.random.default_rng(9)
    is_member = rng.random(1000) < 0.5
    r, v = count_correct(guess_from_scores(rng.normal(size=1000), 100, 100), is_member)
    assert r == 200
    assert one_run_epsilon_lower_bound(1000, r, v, 1e-5) < 0.2


def test_one_run_grows_with_accuracy_and_falls_with_confidence():
    by_v = [one_run_epsilon_lower_bound(1000, 200, v, 1e-5) for v in range(120, 201, 10)]
    assert all(a < b for a, b in zip(by_v, by_v[1:]))
    by_conf = [one_run_epsilon_lower_bound(1000, 200, 180, 1e-5, c) for c in (0.5, 0.9, 0.95, 0.99)]
    assert all(a > b for a, b in zip(by_conf, by_conf[1:]))


@pytest.mark.parametrize("r", [10, 100, 500])
def test_one_run_never_exceeds_perfect_guessing_log_odds(r):
    # v = r, δ = 0: p-value q^r = 1 - conf  =>  q = (1-conf)^(1/r), ε = ln(q/(1-q)).
    q = 0.05 ** (1 / r)
    cap = math.log(q / (1 - q))
    assert one_run_epsilon_lower_bound(1000, r, r, 0.0) == pytest.approx(cap, rel=1e-8)
    for v in (r // 2, (9 * r) // 10, r):
        for delta in (0.0, 1e-5):
            assert one_run_epsilon_lower_bound(1000, r, v, delta) <= cap + 1e-9


def test_guess_from_scores_hand_case():
    g = guess_from_scores([0.1, 0.9, 0.5, 0.3, 0.7], k_pos=2, k_neg=1)
    assert g.tolist() == [-1, 1, 0, 0, 1]
    assert count_correct(g, [False, True, True, False, False]) == (3, 2)
    assert guess_from_scores([1.0, 2.0], 0, 0).tolist() == [0, 0]
    with pytest.raises(ValueError):
        guess_from_scores([1.0, 2.0], 2, 1)


def test_one_run_rejects_impossible_counts():
    with pytest.raises(ValueError):
        one_run_epsilon_lower_bound(10, 5, 6, 1e-5)
    with pytest.raises(ValueError):
        one_run_epsilon_lower_bound(10, 11, 5, 1e-5)

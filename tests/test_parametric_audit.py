"""The white-box audit's statistics on simulated releases of a known mechanism: the composed
trade-off curve, the f-DP one-run bound against it, and the per-step parametric audit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV
from scipy import stats

from dpbench.attacks.gradient_canaries import fit_mixture, likelihood_ratio_scores
from dpbench.attacks.one_run_bounds import fdp_composed_bound, rejects_composed
from dpbench.attacks.parametric_audit import parametric_section
from dpbench.attacks.tradeoff import blow_up_curve
from dpbench.privacy import spent_epsilon

RATE, STEPS, DELTA = 0.05, 60, 1e-5


def releases(m, sigma, *, rate=RATE, steps=STEPS, noise=1.0, clip=1.0, keep=1.0, seed=0):
    """steps × m canary releases of the subsampled Gaussian (units of C), optionally pruned to the
    top `keep` by magnitude per step; the per-entry pruning threshold beside them."""
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    y = np.zeros((steps, m), np.float32)
    tau = np.zeros((steps, m), np.float32)
    for t in range(steps):
        row = clip * (included & (rng.random(m) < rate)) + noise * sigma * rng.standard_normal(m)
        if keep < 1:
            thr = np.sort(np.abs(row))[-int(keep * m)]
            row, tau[t] = np.where(np.abs(row) >= thr, row, 0.0), thr
        y[t] = row
    return y, tau, included


def test_one_gaussian_release_has_the_gaussian_trade_off_curve():
    """T = 1, q = 1: the curve is the Gaussian mechanism's, TPR = Φ(Φ⁻¹(FPR) + 1/σ)."""
    sigma = 1.5
    fpr, tpr = blow_up_curve(sigma, 1.0, 1, DELTA)
    inside = (fpr > 1e-4) & (fpr < 1 - 1e-4)
    exact = stats.norm.cdf(stats.norm.ppf(fpr[inside]) + 1 / sigma)
    assert np.max(np.abs(tpr[inside] - exact)) < 0.01


@pytest.mark.parametrize("sigma", [0.4, 0.665, 2.0])
def test_the_null_distribution_is_a_distribution_at_little_noise(sigma):
    """Q = P·e^(−t) must have mass 1: the PMF's round-off far below the least possible loss,
    blown up by e^(−t), once made Q's mass 10^37 at σ 0.4 (and every test of such a claim free)."""
    from dpbench.attacks.tradeoff import pmfs

    t, p, q = pmfs(sigma, 1 / 23, 150, 6.94e-5)
    assert np.isfinite(q).all() and q.sum() == pytest.approx(1.0, abs=1e-3)


def guesses(y, included, k):
    top = np.argsort(-likelihood_ratio_scores(y))[:k]
    return int(included[top].sum())


@pytest.mark.parametrize(
    "sigma, rate, steps, delta",
    [
        (0.665, 1 / 23, 150, 6.94e-5),
        (0.2, 1 / 23, 150, 6.94e-5),  # the f-DP bounds' floor σ: integer orders alone made it ~10x Opacus' domain
        (0.3, 1 / 3, 30, 1e-5),
        (1.0, 0.5, 2, 1e-3),
        (50.0, 0.1, 4, 1e-5),
    ],
)
def test_the_audits_prv_domain_contains_opacus_one_and_gives_its_epsilon(sigma, rate, steps, delta):
    """The audit's PRV sizes its domain by RDP at integer orders (fast): never smaller than Opacus'
    own domain, and the same ε bounds from the same mesh."""
    from opacus.accountants import PRVAccountant

    from dpbench.attacks import tradeoff

    opacus, ours = PRVAccountant(), tradeoff._PRVAccountant()
    opacus.history = ours.history = [(sigma, rate, steps)]
    kw = dict(eps_error=tradeoff.EPS_ERROR, delta_error=delta / 1000)
    args = ([PoissonSubsampledGaussianPRV(rate, sigma)], [steps], tradeoff.EPS_ERROR, delta / 1000)
    theirs, mine = opacus._get_domain(*args), ours._get_domain(*args)
    assert mine.t_min <= theirs.t_min and mine.t_max >= theirs.t_max and mine.dt == pytest.approx(theirs.dt)
    assert mine.size <= 1.5 * theirs.size  # where the best order is below 2, Opacus' orders size it
    want = opacus._get_dprv(**kw).compute_epsilon(delta, delta / 1000, tradeoff.EPS_ERROR)
    got = ours._get_dprv(**kw).compute_epsilon(delta, delta / 1000, tradeoff.EPS_ERROR)
    assert np.allclose(got, want, atol=tradeoff.EPS_ERROR)


def test_the_composed_f_dp_bound_is_sound_and_sees_less_noise():
    sigma, m, k = 1.0, 5000, 100
    claimed = spent_epsilon(noise_multiplier=sigma, delta=DELTA, sample_rate=RATE, steps=STEPS, accountant="prv")
    y, _, included = releases(m, sigma)
    correct = guesses(y, included, k)
    _, eps = fdp_composed_bound(RATE, STEPS, DELTA, m, k, correct)
    assert 0 < eps <= claimed and not rejects_composed(sigma, RATE, STEPS, DELTA, m, k, correct)
    y, _, included = releases(m, sigma, noise=0.5)  # the run adds half the noise it claims
    correct = guesses(y, included, k)
    assert rejects_composed(sigma, RATE, STEPS, DELTA, m, k, correct)
    assert fdp_composed_bound(RATE, STEPS, DELTA, m, k, correct)[1] > claimed


def test_the_mixture_fit_recovers_the_noise_scale_the_step_and_the_rate():
    """From the releases alone (the fit takes no inclusion), at half the noise the run claims."""
    y, _, _ = releases(4000, 0.8, noise=0.5)
    s, d, w = fit_mixture(y)
    assert (
        s == pytest.approx(0.4, rel=0.05) and d == pytest.approx(1.0, rel=0.1) and w == pytest.approx(RATE / 2, rel=0.2)
    )


def audit(y, tau, included, sigma, accounted_steps=STEPS):
    eps = spent_epsilon(noise_multiplier=sigma, delta=DELTA, sample_rate=RATE, steps=accounted_steps, accountant="prv")
    claimed = {"noise_std": sigma, "clip_norm": 1.0, "sample_rate": RATE, "steps": accounted_steps}
    return eps, parametric_section(
        y, tau, included, delta=DELTA, claimed=claimed, accounted_epsilon=eps, confidence=0.95
    )


@pytest.mark.parametrize("keep", [1.0, 0.6])
def test_the_parametric_audit_brackets_a_correct_mechanism(keep):
    sigma = 1.0
    y, tau, included = releases(20000, sigma, keep=keep)
    eps, p = audit(y, tau, included, sigma)
    assert not p["violation"] and p["off"] == []
    assert 0.85 * eps <= p["epsilon_lower_bound"] <= eps <= p["epsilon_upper"]


@pytest.mark.parametrize(
    "fault, off",
    [
        ({"noise": 0.5}, "noise scale"),
        ({"clip": 2.0}, "clipped norm"),
        ({"rate": 2 * RATE}, "sampling rate"),
        ({"accounted_steps": STEPS // 2}, "steps accounted"),
    ],
)
def test_the_parametric_audit_flags_a_fault_and_names_it(fault, off):
    sigma = 1.0
    kw = {k: v for k, v in fault.items() if k != "accounted_steps"}
    y, tau, included = releases(20000, sigma, **kw)
    eps, p = audit(y, tau, included, sigma, fault.get("accounted_steps", STEPS))
    assert p["violation"] and off in p["off"]
    if off != "steps accounted":  # that one is flagged by counting releases, not by the estimate
        assert p["epsilon_lower_bound"] > eps


@pytest.mark.parametrize("seed", [0, 1])  # seed 1: the fit finds no step at all; seed 0: a spurious one
def test_releases_without_any_canary_signal_give_a_complete_unflagged_record(seed):
    """A fault that drops the canaries, or a run too short to see them: no sensitivity to estimate,
    so nothing is composed and nothing flagged, and the record still has every field."""
    y, tau, included = releases(4000, 1.0, clip=0.0, seed=seed)  # the canaries never reach a release
    eps, p = audit(y, tau, included, 1.0)
    assert not p["violation"] and p["off"] == [] and p["epsilon_lower_bound"] in (None, 0.0)
    assert {"noise_std", "clip_norm", "sample_rate", "claimed", "confidence", "note"} <= set(p)
    assert p["noise_std"][0] == pytest.approx(1.0, rel=0.02)


# The white-box analysis' numeric kernels work in place for speed; these are their formulas
# written plainly (the code before that change): the results must be the same bits.
def plain_fit_mixture(y, iterations=30):
    x = y[y != 0].astype(float)
    s = max(1.4826 * float(np.median(np.abs(x - np.median(x)))), 1e-12)
    d, w = max(float(np.quantile(x, 0.999)), s), 0.01
    for _ in range(iterations):
        z = np.clip((x - d / 2) * d / s**2, -700, 700)
        r = w / (w + (1 - w) * np.exp(-z))
        w = float(np.clip(r.mean(), 1e-6, 1 - 1e-6))
        d = float((r * x).sum() / max(r.sum(), 1e-12))
        s = max(float(np.sqrt(((1 - r) * x**2 + r * (x - d) ** 2).sum() / x.size)), 1e-12)
    return s, d, w


def plain_scores(y):
    s, d, w = plain_fit_mixture(y)
    q = float(np.clip(2 * w, 1e-6, 1 - 1e-6))
    z = np.clip((y.astype(float) - d / 2) * d / s**2, -700, 700)
    return np.where(y != 0, np.logaddexp(np.log1p(-q), np.log(q) + z), 0.0).sum(axis=0)


def plain_mixture_nll(theta, s, kept):
    delta, q = theta
    q = min(max(q, 1e-9), 1 - 1e-9)
    ratio = np.exp(np.clip((kept - delta / 2) * delta / s**2, -700, 700))
    return -((np.log1p(-q + q * ratio) - kept**2 / (2 * s**2)).sum() - kept.size * math.log(s * math.sqrt(2 * math.pi)))


@pytest.mark.parametrize("sigma", [0.3, 0.7, 3.0])
def test_the_in_place_kernels_give_the_plain_formulas_bits(sigma):
    from dpbench.attacks.parametric_audit import Censored, _mixture_nll

    rng = np.random.default_rng(int(sigma * 10))
    included = rng.random(2000) < 0.5
    y = ((included & (rng.random((40, 2000)) < 0.05)) + sigma * rng.standard_normal((40, 2000))).astype(np.float32)
    y[rng.random(y.shape) < 0.02] = 0  # pruned releases
    assert fit_mixture(y) == plain_fit_mixture(y)
    assert np.array_equal(likelihood_ratio_scores(y), plain_scores(y))
    kept = y[y != 0].astype(float)
    for theta in [(1.0, 0.05), (0.4, 0.3), (25.0, 1e-12)]:  # the last: the clip at 700
        assert _mixture_nll(theta, sigma, kept, Censored(np.zeros(0))) == plain_mixture_nll(theta, sigma, kept)
        assert _mixture_nll(theta, sigma, kept, Censored(np.zeros(0)), kept**2 / (2 * sigma**2)) == plain_mixture_nll(
            theta, sigma, kept
        )


def scipy_censored_nlls(theta, s, kept, tau):
    """The censored likelihoods entry by entry through scipy.stats (what the audit computed before
    it evaluated each distinct threshold once)."""
    from scipy import stats

    delta, q = theta
    q = min(max(q, 1e-9), 1 - 1e-9)
    out = (1 - q) * (2 * stats.norm.cdf(tau / s) - 1) + q * (
        stats.norm.cdf((tau - delta) / s) - stats.norm.cdf((-tau - delta) / s)
    )
    plain = np.log(np.clip(2 * stats.norm.cdf(tau / s) - 1, 1e-300, None)).sum()
    return (
        plain_mixture_nll(theta, s, kept) - np.log(np.clip(out, 1e-300, None)).sum(),
        -(stats.norm.logpdf(kept, scale=s).sum() + plain),
    )


@pytest.mark.parametrize("sigma", [0.3, 0.7, 3.0])
def test_censored_likelihoods_per_distinct_threshold_give_scipys_entry_by_entry_bits(sigma):
    from dpbench.attacks.parametric_audit import _censored_normal_nll, _mixture_nll, split_observations

    rng = np.random.default_rng(int(sigma * 10) + 1)
    y = (sigma * rng.standard_normal((30, 4096)) + (rng.random((30, 4096)) < 0.05)).astype(np.float32)
    tau = np.zeros_like(y)
    for t in range(0, 30, 2):  # every other step pruned, each of 4 tensors at its own threshold
        for a in range(0, 4096, 1024):
            tau[t, a : a + 1024] = np.quantile(np.abs(y[t, a : a + 1024]), 0.7)
    y[np.abs(y) < tau] = 0
    kept, censored = split_observations(y, tau)
    raw_tau = tau[y == 0].astype(float)
    assert censored.values.size < 100 < raw_tau.size  # the point: few distinct thresholds
    for theta in [(1.0, 0.05), (0.4, 0.3), (25.0, 1e-12)]:
        mixture, normal = scipy_censored_nlls(theta, sigma, kept, raw_tau)
        assert _mixture_nll(theta, sigma, kept, censored) == mixture
        assert _censored_normal_nll(sigma, kept, censored) == normal


@pytest.mark.parametrize("sigma,rate,steps", [(0.3, 0.05, 40), (0.7, 1 / 23, 150), (2.0, 1.0, 1)])
def test_the_thinned_hull_is_the_plain_monotone_chains(sigma, rate, steps):
    from dpbench.attacks import tradeoff

    x, y = tradeoff._test_points(sigma, rate, steps, DELTA)
    thinned = tradeoff._thin_below_chords(x, y)
    assert thinned[0].size < 0.75 * x.size  # it does thin
    for got, want in zip(tradeoff._upper_hull(x, y), tradeoff._monotone_chain(x, y)):  # the chain unthinned
        assert np.array_equal(got, want)


@pytest.mark.parametrize("threshold", [0, 1, 2, 700, 1395])
def test_the_bound_searches_the_grid_for_the_least_rejected_sigma(monkeypatch, threshold):
    # a claim rejected exactly at grid index ≥ threshold: the search finds that index, reading the
    # floor's (costliest, but cached) curve once: a gross fault, rejected everywhere, stops there
    # instead of bisecting through the large curves next to it
    from dpbench.attacks import one_run_bounds

    seen = []

    def rejects(sigma, *args):
        seen.append(one_run_bounds.SIGMA_GRID.index(sigma))
        return seen[-1] >= threshold

    monkeypatch.setattr(one_run_bounds, "rejects_composed", rejects)
    sigma, _ = fdp_composed_bound(RATE, STEPS, DELTA, 1000, 100, 100)
    assert sigma == one_run_bounds.SIGMA_GRID[threshold]
    assert seen.count(0) == 1
    if threshold == 0:
        assert len(seen) == 2  # the top, then the floor: rejected everywhere, done
    else:
        assert len(seen) <= 2 + 11  # the top, the floor, then at most log2(1395) bisections


@pytest.mark.parametrize("seed", [0, 1])
def test_the_mixture_likelihoods_gradient_is_its_finite_difference(seed):
    """The optimiser follows the analytic gradient: it must be the likelihood's own, kept and
    censored entries alike (central differences agree to 1e-5 relative)."""
    from dpbench.attacks.parametric_audit import _mixture_nll, split_observations

    rng = np.random.default_rng(seed)
    s, delta, q = 0.7, 1.0, 0.2
    y = (rng.random((40, 300)) < q) * delta + s * rng.standard_normal((40, 300))
    tau = np.where(rng.random(y.shape) < 0.5, 0.6, 0.0)  # half the entries pruned below 0.6
    y = np.where(np.abs(y) < tau, 0.0, y)
    kept, censored = split_observations(y, tau)
    for theta in ((0.9, 0.15), (1.3, 0.3), (0.2, 0.05)):
        value, grad = _mixture_nll(theta, s, kept, censored, gradient=True)
        assert value == _mixture_nll(theta, s, kept, censored)
        for i, h in enumerate((1e-6, 1e-7)):
            up, down = list(theta), list(theta)
            up[i] += h
            down[i] -= h
            numeric = (_mixture_nll(up, s, kept, censored) - _mixture_nll(down, s, kept, censored)) / (2 * h)
            assert grad[i] == pytest.approx(numeric, rel=1e-5, abs=1e-4)

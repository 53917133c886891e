"""The per-step parametric audit (Nasr et al. 2023's composition view) of gradient canaries.

Every step releases each canary's coordinate: y = b·Δ + N(0, s²), where b = 1 when the canary
was included and Poisson-sampled that step (probability q), Δ is its clipped norm and s the
noise's standard deviation (σ·C in a correct run: Δ = C, s = σC). Excluded canaries are pure
noise, so they give s; included ones are a two-component mixture with that s, which gives Δ
and q. Update pruning zeroes the small coordinates of a release: a zero is then the censored
observation "|y| < τ", τ the smallest magnitude kept in that tensor that step, and the
likelihood says so. Each parameter gets a Wald interval from the observed information.

The run's ε follows by composing T steps of a subsampled Gaussian with noise multiplier s/Δ at
rate q with the tight (PRV) accountant: the point estimate, and the interval's two ends (the
most and the least private parameters in the joint interval). The low end is a lower
confidence bound on the run's ε; above the accounted ε, the run is flagged, with each
parameter whose interval excludes the claimed value on the less private side named. More
releases observed than the accountant counted is flagged outright: it needs no estimate. All of it
holds only if each step IS a subsampled Gaussian mechanism (the one-run bounds need no such
assumption).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special, stats

from dpbench.attacks.tradeoff import SIGMA_FLOOR, epsilon_bounds

ASSUMPTION = "each step is a Poisson-subsampled Gaussian mechanism on each canary's coordinate"


class Censored:
    """The censoring thresholds of the pruned releases. Update pruning sets one threshold per tensor
    per step, so millions of entries share a few thousand values: each term of a likelihood is
    computed once per distinct threshold and gathered back into place, so the sum is taken over
    the same array as entry by entry (the same bits, a thousandth of the special-function calls)."""

    def __init__(self, tau: np.ndarray):
        self.values, self.index = np.unique(tau, return_inverse=True)
        self.size = tau.size

    def total(self, per_value: np.ndarray) -> float:
        """Σ over the entries of a function given at each distinct threshold."""
        return per_value[self.index].sum()


# stats.norm's cdf and logpdf cost mostly their argument checks and masking on millions of
# entries: special.ndtr is the cdf they call, and this logpdf their formula, for a positive scale
def _norm_logpdf(x: np.ndarray, s: float) -> np.ndarray:
    z = x / s
    return -(z**2) / 2.0 - _NORM_LOG_C - np.log(np.float64(s))


_NORM_LOG_C = np.log(np.sqrt(2 * np.pi))


def _censored_normal_nll(s: float, kept: np.ndarray, censored: Censored) -> float:
    ll = _norm_logpdf(kept, s).sum()
    if censored.size:
        ll += censored.total(np.log(np.clip(2 * special.ndtr(censored.values / s) - 1, 1e-300, None)))
    return -ll


def _mixture_nll(theta, s: float, kept: np.ndarray, censored: Censored, half_square=None, gradient: bool = False):
    """The negative log-likelihood of (Δ, q), and with `gradient` its gradient too (for the
    optimiser: a quasi-Newton search needs a few dozen evaluations where a simplex needed ~200,
    each over millions of entries at the default run). `half_square`: kept²/(2s²), the same at
    every θ, so the caller computes it once."""
    delta, q = theta
    q = min(max(q, 1e-9), 1 - 1e-9)
    half_square = kept**2 / (2 * s**2) if half_square is None else half_square
    # log1p(−q + q·ratio) − kept²/(2s²), ratio = exp(clip((kept − Δ/2)·Δ/s²)) the two components'
    # densities' ratio (one exp per entry); in one buffer, in place: the same operations, the same bits
    ll = kept - delta / 2
    ll *= delta
    ll /= s**2
    free = np.abs(ll) < 700 if gradient else None  # where the clip does not hold the ratio still
    np.clip(ll, -700, 700, out=ll)
    np.exp(ll, out=ll)
    ratio = ll.copy() if gradient else None
    ll *= q
    ll += -q
    np.log1p(ll, out=ll)
    if gradient:  # d/dq log(1 − q + q·ratio) = (ratio − 1)/(1 − q + q·ratio); d/dΔ: q·ratio·(y − Δ)/s² over it
        mix = 1 - q + q * ratio
        g_q = ((ratio - 1) / mix).sum()
        g_d = (np.where(free, q * ratio * (kept - delta), 0.0) / mix).sum() / s**2
    ll -= half_square
    ll = ll.sum() - kept.size * math.log(s * math.sqrt(2 * math.pi))
    if censored.size:
        t = censored.values
        inside, moved = 2 * special.ndtr(t / s) - 1, special.ndtr((t - delta) / s) - special.ndtr((-t - delta) / s)
        out = (1 - q) * inside + q * moved
        ll += censored.total(np.log(np.clip(out, 1e-300, None)))
        if gradient:
            held = np.where(out > 1e-300, 1 / np.clip(out, 1e-300, None), 0.0)
            g_q += censored.total((moved - inside) * held)
            pdf = (np.exp(-(((-t - delta) / s) ** 2) / 2) - np.exp(-(((t - delta) / s) ** 2) / 2)) / _SQRT_2PI
            g_d += censored.total(q * pdf / s * held)
    return (-ll, -np.array([g_d, g_q])) if gradient else -ll


_SQRT_2PI = math.sqrt(2 * math.pi)


def _hessian(f, x: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = len(x)
    H = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            ei, ej = np.eye(n)[i] * h[i], np.eye(n)[j] * h[j]
            H[i, j] = (f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)) / (4 * h[i] * h[j])
    return H


def split_observations(y: np.ndarray, tau: np.ndarray) -> tuple[np.ndarray, Censored]:
    """(kept values, the censoring thresholds of the pruned ones); y is steps × canaries, tau the
    per-entry threshold (0 where nothing was pruned)."""
    pruned = y == 0
    return y[~pruned].astype(float), Censored(tau[pruned].astype(float))


def estimate(y: np.ndarray, tau: np.ndarray, included: np.ndarray, confidence: float, start: tuple) -> dict:
    """Point estimates and Wald intervals of s, Δ and q (each at a Bonferroni share of the level);
    `start` (Δ, q) is one of the optimiser's starting points (the claimed values: a start only)."""
    z = stats.norm.ppf(1 - (1 - confidence) / (2 * 3))
    kept_out, cens_out = split_observations(y[:, ~included], tau[:, ~included])
    kept_in, cens_in = split_observations(y[:, included], tau[:, included])
    # s: closed form without censoring, else a 1-D MLE
    s0 = math.sqrt(np.mean(kept_out**2)) if kept_out.size else 1.0
    if cens_out.size:
        res = optimize.minimize_scalar(
            lambda v: _censored_normal_nll(math.exp(v), kept_out, cens_out), bracket=(math.log(s0) - 1, math.log(s0))
        )
        s0 = math.exp(res.x)
    if s0 <= 0:
        return {"noise_std": (0.0, 0.0, 0.0), "clip_norm": None, "sample_rate": None}
    hs = s0 * 1e-3
    info_s = _hessian(lambda v: _censored_normal_nll(v[0], kept_out, cens_out), np.array([s0]), np.array([hs]))[0, 0]
    se_s = 1 / math.sqrt(max(info_s, 1e-300))
    # Δ and q, s held at its estimate (its interval is far narrower than theirs)
    m1 = kept_in.mean() if kept_in.size else 0.0
    m2 = (kept_in**2).mean() - s0**2 if kept_in.size else 0.0
    d0 = m2 / m1 if m1 > 0 and m2 > 0 else s0
    q0 = min(max(m1 / d0 if d0 > 0 else 0.05, 1e-4), 0.99)
    half_square = kept_in**2 / (2 * s0**2)
    nll = lambda th: _mixture_nll(th, s0, kept_in, cens_in, half_square)
    n = max(kept_in.size + cens_in.size, 1)  # the mean's scale, for tolerances that mean the same at any size

    def mean_nll(th):
        value, grad = _mixture_nll(th, s0, kept_in, cens_in, half_square, gradient=True)
        return value / n, grad / n

    res = min(
        (
            optimize.minimize(
                mean_nll,
                np.array([x0[0], min(max(x0[1], 1e-9), 1 - 1e-9)]),
                jac=True,
                method="L-BFGS-B",
                bounds=[(None, None), (1e-9, 1 - 1e-9)],
                options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 500},
            )
            for x0 in ((d0, q0), start)
        ),
        key=lambda r: r.fun,
    )
    d_hat, q_hat = float(res.x[0]), float(min(max(res.x[1], 0.0), 1.0))
    H = _hessian(nll, np.array([d_hat, q_hat]), np.array([max(abs(d_hat), 1e-3) * 1e-3, max(q_hat, 1e-4) * 1e-3]))
    try:
        cov = np.linalg.inv(H)
        se_d, se_q = (math.sqrt(max(cov[0, 0], 0.0)), math.sqrt(max(cov[1, 1], 0.0)))
    except np.linalg.LinAlgError:
        cov, se_d, se_q = None, math.inf, math.inf
    return {
        "cov": cov,
        "point": (d_hat, q_hat),
        "noise_std": (s0, max(s0 - z * se_s, 0.0), s0 + z * se_s),
        "clip_norm": (d_hat, max(d_hat - z * se_d, 0.0), d_hat + z * se_d),
        "sample_rate": (q_hat, max(q_hat - z * se_q, 1e-9), min(q_hat + z * se_q, 1.0)),
    }


def _bounds(sigma: float, rate: float, steps: int, delta: float) -> tuple:
    """(lower, estimate, upper) of ε from the PRV (None for each it cannot give: see `epsilon_bounds`)."""
    return epsilon_bounds(sigma, min(rate, 1.0), steps, delta) or (None, None, None)


def _most_private(est: dict, s_high: float, steps: int, delta: float, confidence: float) -> float | None:
    """A lower confidence bound on ε: its least value over the joint region of (Δ, q) at the
    noise's upper end. Δ and q are estimated together, strongly anti-correlated (qΔ is the mean
    release), so the corner of their separate intervals would be far more private than any pair
    the data allow. The region is the Wald ellipse at two of the three parameters' share of the
    level. ε grows with Δ/s and with q; the PRV is evaluated at the boundary points where the
    CLT's μ = q·√(T·(e^((Δ/s)²) − 1)) is smallest."""
    cov, (d0, q0) = est["cov"], est["point"]
    if cov is None or not np.all(np.isfinite(cov)):
        return _bounds(s_high / max(est["clip_norm"][1], 1e-12), est["sample_rate"][1], steps, delta)[0]
    radius = math.sqrt(stats.chi2.ppf(1 - (1 - confidence) * 2 / 3, df=2))
    vals, vecs = np.linalg.eigh(cov)
    axes = vecs * np.sqrt(np.clip(vals, 0, None)) * radius
    angles = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    d, q = np.array([[d0], [q0]]) + axes @ np.stack([np.cos(angles), np.sin(angles)])
    if np.any(d <= 0) or np.any(q <= 0):
        return 0.0  # the region reaches a mechanism that releases nothing
    mu = np.minimum(q, 1.0) * np.sqrt(steps * np.expm1(np.minimum((d / s_high) ** 2, 700.0)))
    lows = [_bounds(s_high / d[k], q[k], steps, delta)[0] for k in np.argsort(mu)[:4]]
    lows = [e for e in lows if e is not None]
    return min(lows) if lows else None


def parametric_section(
    y: np.ndarray,
    tau: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    claimed: dict,
    accounted_epsilon: float | None,
    confidence: float,
) -> dict:
    """The result's `audit.whitebox.parametric`. `claimed` holds the run's own noise_std (σC),
    clip_norm (C), sample_rate (q) and steps (what the accountant counted)."""
    est = estimate(y, tau, included, confidence, (claimed["clip_norm"], claimed["sample_rate"]))
    steps = int(y.shape[0])
    s, d, q = est["noise_std"], est["clip_norm"], est["sample_rate"]
    finite = lambda xs: [x if x is not None and math.isfinite(x) else None for x in xs]  # noqa: E731 - JSON has no inf
    record = {"assumes": ASSUMPTION, "steps_observed": steps, "noise_std": finite(s), "claimed": claimed}
    record.update(confidence=confidence, clip_norm=[None] * 3, sample_rate=[None] * 3)
    if d is None or d[0] <= 0 or q[0] <= 0:  # no release shows a canary: nothing to compose
        return {
            **record,
            "epsilon": None,
            "epsilon_lower_bound": None,
            "epsilon_upper": None,
            "violation": False,
            "off": [],
            "note": "no canary signal in the releases: the step's sensitivity cannot be estimated",
        }
    point = _bounds(s[0] / d[0], q[0], steps, delta)[1]
    low = _most_private(est, s[2], steps, delta, confidence)
    high = _bounds(s[1] / d[2], q[2], steps, delta)[2] if d[2] < math.inf else None  # the least private end
    off = []
    if claimed.get("noise_std") is not None and s[2] < claimed["noise_std"]:
        off.append("noise scale")
    if claimed.get("clip_norm") is not None and d[1] > claimed["clip_norm"]:
        off.append("clipped norm")
    if claimed.get("sample_rate") is not None and q[1] > claimed["sample_rate"]:
        off.append("sampling rate")
    if claimed.get("steps") is not None and steps > claimed["steps"]:
        off.append("steps accounted")
    # more releases than the accountant counted is a fact, not an estimate: the claim cannot hold
    flagged = accounted_epsilon is not None and (
        (low is not None and low > accounted_epsilon) or "steps accounted" in off
    )
    if not flagged:
        off = []  # at high noise Δ and q trade off against each other: name parameters only for a flagged run
    below_floor = s[0] / d[0] < SIGMA_FLOOR
    return {
        **record,
        "clip_norm": finite(d),
        "sample_rate": finite(q),
        "epsilon": point,
        "epsilon_lower_bound": low,
        "epsilon_upper": high,
        "violation": bool(flagged),
        "off": off,
        "note": f"estimated noise multiplier below {SIGMA_FLOOR}: ε is at least the lower bound's, the estimate and "
        "upper end unbounded (null)"
        if below_floor
        else "",
    }

"""The trade-off curve of T Poisson-subsampled Gaussian releases, from Opacus' PRV accountant.

The f-DP one-run audit (`one_run_bounds.fdp_composed_bound`) tests the claim "this run is as
private as the mechanism it accounts for": T releases, each the Gaussian mechanism (noise σ) on a
Poisson sample at rate q. Opacus' PRV accountant already builds that mechanism's privacy loss
distribution Y = log(P/Q) under P, discretised with error bounds (Gopi et al. 2021); under Q its
mass is p·e^(−t). Thresholding Y gives every Neyman–Pearson test, so the curve of
(FPR = Q(Y ≥ t), TPR = P(Y ≥ t)), and the same with P and Q swapped (a canary's "out" guessed
from low scores), is the most any test can do. The audit needs the inverse of its "blow-up"
(TPR → the least FPR that reaches it), taken over the upper concave hull of both directions so
the claim is the symmetric one DP makes.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.prv import Domain

# the PRV discretisation's error on ε; finer costs time
EPS_ERROR = 0.01
# below this noise multiplier the PRV grid outgrows memory (ε is then in the tens or more)
SIGMA_FLOOR = 0.2


class _IntegerOrdersRDP(RDPAccountant):
    # Opacus' own integer orders (closed form): its fractional ones are a pure-Python series, 10-30
    # times slower. A subset of its orders, so the ε, and with it the domain, is never smaller.
    DEFAULT_ALPHAS = [a for a in RDPAccountant.DEFAULT_ALPHAS if float(a).is_integer()]


def _rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """RDP's ε at the integer orders; at all of Opacus' orders when the best integer one is the
    smallest, since the best order then lies below 2, where integer orders alone would grow the
    domain (and the trade-off curve's cost) several times over."""
    acc = _IntegerOrdersRDP()
    acc.history = history
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' "optimal order is the smallest/largest alpha"
        epsilon, order = acc.get_privacy_spent(delta=delta)
        if order == _IntegerOrdersRDP.DEFAULT_ALPHAS[0]:
            full = RDPAccountant()
            full.history = history
            epsilon, _ = full.get_privacy_spent(delta=delta)
    return float(epsilon)


class _PRVAccountant(PRVAccountant):
    """Opacus' PRV accountant, its truncation domain bounded by RDP at integer orders where they
    are the best ones.

    Opacus sizes the domain (Gopi et al., remark 5.6) by the RDP ε at its default orders, most of
    them fractional; that sizing was most of the audit's analysis time, since the f-DP bounds build
    one PRV per σ they try. RDP at a subset of orders gives an ε at least as large, so this domain
    contains Opacus' one: its truncation error is no larger. The mesh is Opacus' own."""

    def _get_domain(self, prvs, num_self_compositions, eps_error, delta_error):
        total = sum(num_self_compositions)
        history = [(prv.noise_multiplier, prv.sample_rate, n) for prv, n in zip(prvs, num_self_compositions)]
        size = _rdp_epsilon(history, delta_error / 4)
        for prv in prvs:
            size = max(size, _rdp_epsilon([(prv.noise_multiplier, prv.sample_rate, 1)], delta_error / (8 * total)))
        size = max(size, eps_error) + 3
        mesh = eps_error / np.sqrt(total * np.log(12 / delta_error) / 2)
        return Domain.create_aligned(-size, size, mesh)


@functools.lru_cache(maxsize=64)
def _discrete_prv(noise_multiplier: float, sample_rate: float, steps: int, delta: float):
    """The discretised PRV of `steps` subsampled Gaussian releases (what Opacus' accountant builds)."""
    acc = _PRVAccountant()
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return acc._get_dprv(eps_error=EPS_ERROR, delta_error=delta / 1000)


def composed_prv(noise_multiplier: float, sample_rate: float, steps: int, delta: float):
    """(losses t, pmf under P) of that PRV."""
    dprv = _discrete_prv(noise_multiplier, sample_rate, steps, delta)
    return np.asarray(dprv.domain.ts, dtype=float), np.clip(np.asarray(dprv.pmf, dtype=float), 0.0, None)


def pmfs(noise_multiplier: float, sample_rate: float, steps: int, delta: float):
    """(losses t, pmf under P, pmf under Q = P·e^(−t)) of that PRV, Q not renormalised."""
    t, p = composed_prv(noise_multiplier, sample_rate, steps, delta)
    if sample_rate < 1:
        # each release's loss log(P/Q) is at least log(1 - q): below steps·log(1 - q) the PMF holds
        # only the convolution's round-off, which e^(-t) would blow up into most of Q's mass
        p = np.where(t >= steps * np.log1p(-sample_rate) - (t[1] - t[0]), p, 0.0)
    return t, p, p * np.exp(-np.where(p > 0, t, 0.0))


def epsilon_bounds(noise_multiplier: float, sample_rate: float, steps: int, delta: float):
    """(lower, estimate, upper) of the mechanism's ε at δ, from the same discretised PRV. Below
    SIGMA_FLOOR: (ε at the floor, None, None), since ε only grows as σ falls. None where Opacus'
    PRV cannot discretise the mechanism."""
    from dpbench.privacy import PRV_FAILURES

    if sample_rate <= 0 or steps == 0:
        return 0.0, 0.0, 0.0
    floor = noise_multiplier < SIGMA_FLOOR
    try:
        dprv = _discrete_prv(max(noise_multiplier, SIGMA_FLOOR), sample_rate, steps, delta)
        low, mid, high = dprv.compute_epsilon(delta, delta / 1000, EPS_ERROR)
    except PRV_FAILURES:
        return None
    return (max(float(low), 0.0), None, None) if floor else (max(float(low), 0.0), float(mid), float(high))


def _upper_hull(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The upper concave hull of points (x ascending). The monotone chain is a Python loop, and a
    fine PRV has millions of points: vectorised passes first drop what it would pop anyway (a
    point repeating its predecessor, or on or below its neighbours' chord, is no vertex of the
    hull), which leaves it a third of the work and the same hull."""
    return _monotone_chain(*_thin_below_chords(x, y))


def _monotone_chain(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hx: list[float] = []
    hy: list[float] = []
    for a, b in zip(x.tolist(), y.tolist()):
        while len(hx) >= 2 and (hx[-1] - hx[-2]) * (b - hy[-2]) - (hy[-1] - hy[-2]) * (a - hx[-2]) >= 0:
            hx.pop()
            hy.pop()
        hx.append(a)
        hy.append(b)
    return np.array(hx), np.array(hy)


def _thin_below_chords(x: np.ndarray, y: np.ndarray, passes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    keep = np.ones(x.size, bool)
    keep[1:] = (x[1:] != x[:-1]) | (y[1:] != y[:-1])
    x, y = x[keep], y[keep]
    for _ in range(passes):
        if x.size <= 2:
            break
        below = (x[1:-1] - x[:-2]) * (y[2:] - y[:-2]) - (y[1:-1] - y[:-2]) * (x[2:] - x[:-2]) >= 0
        if not below.any():
            break
        keep = np.ones(x.size, bool)
        keep[1:-1] = ~below
        x, y = x[keep], y[keep]
    return x, y


@functools.lru_cache(maxsize=256)
def blow_up_curve(noise_multiplier: float, sample_rate: float, steps: int, delta: float):
    """(FPR, TPR) points of the best tests between one canary in and out, both directions,
    upper concave hull from (0, 0) to (1, 1)."""
    if noise_multiplier <= 0:
        return np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0])  # no noise: a perfect test
    return _upper_hull(*_test_points(noise_multiplier, sample_rate, steps, delta))


def _test_points(noise_multiplier: float, sample_rate: float, steps: int, delta: float):
    """(FPR, TPR) of every threshold test on the PRV, both directions, with (0, 0) and (1, 1),
    sorted by FPR (ties: highest TPR first)."""
    t, p, q = pmfs(noise_multiplier, sample_rate, steps, delta)
    q = q / q.sum() if q.sum() > 0 else q
    # reject "out" when Y ≥ t: FPR = Q(Y ≥ t), TPR = P(Y ≥ t)
    tpr = np.flip(np.cumsum(np.flip(p)))
    fpr = np.flip(np.cumsum(np.flip(q)))
    # the other direction: reject "in" when Y ≤ t, i.e. P's and Q's roles swapped
    fpr2 = np.cumsum(p)
    tpr2 = np.cumsum(q)
    x = np.concatenate([[0.0, 1.0], fpr, fpr2])
    y = np.concatenate([[0.0, 1.0], tpr, tpr2])
    order = np.lexsort((-y, x))
    return np.clip(x[order], 0, 1), np.clip(y[order], 0, 1)


def blow_up_inverse(noise_multiplier: float, sample_rate: float, steps: int, delta: float):
    """TPR ↦ the least FPR at which some test reaches it (linear between hull points: randomised tests)."""
    fpr, tpr = blow_up_curve(noise_multiplier, sample_rate, steps, delta)
    # the hull is non-decreasing in TPR; keep the first FPR of each TPR so the inverse is the least
    tpr_u, first = np.unique(tpr, return_index=True)
    fpr_u = fpr[first]
    return lambda r: float(np.interp(r, tpr_u, fpr_u))

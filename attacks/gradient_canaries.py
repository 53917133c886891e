"""White-box one-run audit with gradient canaries (Nasr et al. 2023, "Tight Auditing of
Differentially Private Machine Learning"; Steinke, Nasr & Jagielski 2023, one run).

`m` canaries, each a gradient on one trainable coordinate of its own (distinct, seeded), are
each included with probability ½ (seeded, recorded). At every step an included canary is
Poisson-sampled at the run's own rate, like any example, so the accounted ε covers it. A
sampled canary enters the training step itself: in DP-SGD as one more per-example gradient
(of norm RAW_SCALE·C, so Opacus' clipping must bring it to C) through the same Opacus
optimizer, clipping, noise and post-noise hook (dualpriv's update pruning) as the real
examples; in dpzo as one more clipped scalar of the release; in non-private training added
to the gradient (the no-noise control).

The auditor sees every released noisy gradient (white box: all iterates) and knows the
non-canary data, as DP's threat model allows: per step it subtracts the real examples'
clipped sum at the canary coordinates (read from the optimizer before the canaries enter)
and scores what is left with the log-likelihood ratio of the subsampled Gaussian,
Σₜ log(1 − q + q·exp((yₜ − C/2)·C/(σC)²)) (summed yₜ/C when σ = 0); a coordinate the update
pruning zeroed carries no evidence that step. The top and bottom scores are guessed "in" and
"out"; Steinke et al.'s bound (assumes (ε, δ)-DP only) and the f-DP bound of Mahloujifar et
al. (assumes the trade-off of the Gaussian mechanism with that (ε, δ)) turn the right guesses
into ε lower bounds, each beside its ceiling (all guesses right).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import opacus
import torch

from dpbench.attacks import one_run_bounds, tradeoff
from dpbench.attacks.canary_audit import GUESS_FRACTIONS, guess_pairs
from dpbench.attacks.metrics import CONFIDENCE
from dpbench.attacks.one_run_bounds import (
    count_correct,
    fdp_composed_bound,
    fdp_epsilon_lower_bound,
    guess_from_scores,
    one_run_epsilon_lower_bound,
)
from dpbench.attacks.parametric_audit import parametric_section
from dpbench.cache import remembered
from dpbench.errors import DpbenchError

RAW_SCALE = 10.0  # a canary's unclipped gradient norm, in units of C: clipping must act on it
SCORE = (
    "log-likelihood ratio of the subsampled Gaussian on each released coordinate, real examples' sum removed, "
    "its noise scale, step and rate fitted to the releases (inclusion unread)"
)
SCALAR_SCORE = "sum over releases of the canary's sign code times the release, in units of C"
AUDIT_BLOCK_NOTE = "the canaries sat on an audit-only parameter block no forward reads: training was not changed"
UTILITY_NOTE = (
    "utility was measured on the run trained with the white-box gradient canaries (one coordinate "
    "each, sampled like an example)"
)


AUDIT_BLOCK = 4096  # coordinates per tensor of the audit-only block (one canary each)
PLAN_REPLICATES = 4  # simulations of the claim that fix the f-DP bound's guess count (planned_guesses)
STEINKE_M = 1000  # canaries Steinke et al.'s bound reads: its 2mδ term caps it at larger m
# Each audit's share of 1 − CONFIDENCE, fixed in advance (weighted Bonferroni: `violation`, the
# union of the three flags, holds at CONFIDENCE). The f-DP bound is the one-run bound with the power
# to reach ε, so it gets most; Steinke's bound reads STEINKE_M canaries and its 2mδ term caps it far
# below ε at the default run, so it gets least (benchmarks/audit-power.md has the simulation).
AUDIT_SHARES = {"steinke": 0.05, "fdp": 0.75, "parametric": 0.2}


def audit_block(m: int, device="cpu") -> list[torch.nn.Parameter]:
    """Trainable tensors, m coordinates in all, that no forward reads: the gradient canaries'
    own coordinates. Opacus clips, noises and steps them like any parameter, and the update
    pruning prunes them, but real examples' gradients there are zero, so training is the same."""
    sizes = [AUDIT_BLOCK] * (m // AUDIT_BLOCK) + ([m % AUDIT_BLOCK] if m % AUDIT_BLOCK else [])
    return [torch.nn.Parameter(torch.zeros(n, device=device)) for n in sizes]


@dataclass
class GradientCanaries:
    """The canaries of one training run and every release the auditor saw at their coordinates.

    `placement` "audit-block": `params` is the audit block (`audit_block(m)`), canary j on its
    j-th coordinate. "model": each canary on a random trainable coordinate of the model (they
    then change training slightly, but also see faults in real layers' per-example gradients)."""

    m: int
    seed: int
    rate: float  # the per-step Poisson rate, the real examples' own
    clip: float  # C
    noise_multiplier: float  # σ (0: non-private)
    params: list[torch.nn.Parameter]
    placement: str = "audit-block"
    included: np.ndarray = field(init=False)
    scores: np.ndarray = field(init=False)
    steps: int = field(default=0, init=False)
    sampled: int = field(default=0, init=False)  # canary-steps that entered training

    def __post_init__(self) -> None:
        sizes = [p.numel() for p in self.params]
        if self.m > sum(sizes):
            raise DpbenchError(
                f"{self.m} gradient canaries need as many trainable coordinates; the model has {sum(sizes)}"
            )
        rng = np.random.default_rng([self.seed, 0x67C])
        self.included = rng.random(self.m) < 0.5
        if self.placement == "audit-block":
            flat = np.arange(self.m)
        else:
            flat = rng.choice(sum(sizes), size=self.m, replace=False)  # distinct coordinates
        offsets = np.cumsum([0, *sizes])
        owner = np.searchsorted(offsets, flat, side="right") - 1
        self.owner, self.coordinate = owner, flat - offsets[owner]
        # per parameter: its canaries and their flat indices in it
        self.groups = [
            (i, torch.from_numpy(np.flatnonzero(owner == i)), torch.from_numpy(flat[owner == i] - offsets[i]))
            for i in range(len(self.params))
            if np.any(owner == i)
        ]
        self.sampling = np.random.default_rng([self.seed, 0x5A3])
        self.scores = np.zeros(self.m)
        self.known = np.zeros(self.m)
        self.released: list[np.ndarray] = []  # per step: y at every canary (0 where pruned)
        self.thresholds: list[np.ndarray] = []  # per step: the pruning threshold at every canary

    # -- the mechanism's side --------------------------------------------------------------
    def draw(self) -> np.ndarray:
        """The canaries that enter this step: included and Poisson-sampled at the run's rate."""
        active = np.flatnonzero(self.included & (self.sampling.random(self.m) < self.rate))
        self.sampled += active.size
        return active

    def rows(self, active: np.ndarray, scale: float, only: int | None = None) -> list[torch.Tensor]:
        """Per parameter (or parameter `only`), the per-example gradients of `active` canaries:
        row k holds `scale` on canary active[k]'s coordinate, zeros elsewhere."""
        chosen = range(len(self.params)) if only is None else [only]
        out = []
        for i in chosen:
            p = self.params[i]
            rows = torch.zeros((len(active), p.numel()), dtype=p.dtype)
            mine = np.flatnonzero(self.owner[active] == i)
            rows[torch.from_numpy(mine), torch.from_numpy(self.coordinate[active[mine]])] = scale
            out.append(rows.view(len(active), *p.shape).to(p.device))
        return out

    def by_tensor(self, active: np.ndarray) -> dict[int, np.ndarray]:
        """The active canaries grouped by the tensor that holds their coordinate."""
        owners = self.owner[active]
        return {int(i): active[owners == i] for i in np.unique(owners)}

    def add_to(self, tensors: list[torch.Tensor | None], active: np.ndarray, value: float) -> None:
        """Add `value` at each active canary's coordinate (a clipped canary entering a sum)."""
        for i, ids in self.by_tensor(active).items():
            tensors[i].view(-1)[torch.from_numpy(self.coordinate[ids])] += value

    def gather(self, tensors: list[torch.Tensor | None], scale: float = 1.0) -> np.ndarray:
        """Every canary's coordinate of `tensors` (one per parameter; None reads as zeros)."""
        out = np.zeros(self.m)
        for i, ids, coords in self.groups:
            if tensors[i] is not None:
                out[ids.numpy()] = tensors[i].detach().reshape(-1)[coords].double().cpu().numpy() * scale
        return out

    def pruning_thresholds(self, tensors: list[torch.Tensor | None], scale: float) -> np.ndarray:
        """Per canary, the smallest magnitude its tensor kept this step (0 when nothing was pruned)."""
        out = np.zeros(self.m)
        for i, ids, _ in self.groups:
            g = tensors[i]
            if g is None:
                continue
            kept = g.detach().reshape(-1).abs()
            kept = kept[kept != 0]
            if 0 < kept.numel() < g.numel():
                out[ids.numpy()] = float(kept.min()) * scale
        return out

    # -- the auditor's side ----------------------------------------------------------------
    def remember_known(self, known: np.ndarray) -> None:
        """The real examples' clipped sum at the canary coordinates this step."""
        self.known = known

    def observe(self, released: np.ndarray, thresholds: np.ndarray | None = None) -> None:
        """One step's released noisy sum at the canary coordinates (before averaging); a zero
        is a coordinate the update pruning removed (censored: its magnitude was below the
        threshold)."""
        kept = released != 0
        self.released.append(np.where(kept, released - self.known, 0.0).astype(np.float32))
        if thresholds is not None and thresholds.any():  # kept only for steps that pruned
            self.thresholds.append((self.steps, thresholds.astype(np.float32)))
        self.steps += 1

    def observations(self) -> tuple[np.ndarray, np.ndarray]:
        """(releases, thresholds), steps × canaries; a threshold of 0: nothing pruned."""
        y = np.stack(self.released) if self.released else np.zeros((0, self.m), np.float32)
        tau = np.zeros_like(y)
        for step, row in self.thresholds:
            tau[step] = row
        return y, tau

    @property
    def pruned(self) -> bool:
        """Did the update pruning zero any canary coordinate?"""
        return bool(self.thresholds)

    def finish(self) -> None:
        """The canaries' scores, from the releases alone: the subsampled Gaussian's log-likelihood
        ratio with its noise scale, step and rate fitted to all releases without reading which
        canaries were included (so less noise than claimed reads as more evidence, and the
        guesses stay a function of the releases: the bounds stay sound)."""
        y, _ = self.observations()
        self.scores = likelihood_ratio_scores(y, self.noise_multiplier > 0)

    def fraction_called_in(self) -> float:
        """The share of canaries the scores alone call "in": likelihood ratio above 1 (the
        test at inclusion's prior ½). Guesses split this way are right at every count when the
        scores separate, whatever the binomial number of included canaries; it reads no
        inclusion, so the bound stays sound."""
        return float(np.mean(self.scores > 0.0))


def fit_mixture(y: np.ndarray, iterations: int = 30) -> tuple[float, float, float]:
    """(s, Δ, w): y ~ (1 − w)·N(0, s²) + w·N(Δ, s²) fitted by EM to the non-zero releases,
    labels unseen. At the default run that is 30 passes over 15 million floats: each pass works
    in two buffers, in place (the same operations in the same order as the formulas in the
    comments, so the same bits, at under half the time of fresh arrays per operation)."""
    x = y[y != 0].astype(float)
    if x.size == 0:
        return 0.0, 0.0, 0.0
    s = max(1.4826 * float(np.median(np.abs(x - np.median(x)))), 1e-12)
    d, w = max(float(np.quantile(x, 0.999)), s), 0.01
    x2, r, t = np.square(x), np.empty_like(x), np.empty_like(x)
    for _ in range(iterations):
        # r = w / (w + (1 − w)·exp(−z)), z = clip((x − Δ/2)·Δ/s²): the canary component's responsibility
        np.subtract(x, d / 2, out=r)
        r *= d
        r /= s**2
        np.clip(r, -700, 700, out=r)
        np.negative(r, out=r)
        np.exp(r, out=r)
        r *= 1 - w
        r += w
        np.divide(w, r, out=r)
        w = float(np.clip(r.mean(), 1e-6, 1 - 1e-6))
        d = float(np.multiply(r, x, out=t).sum() / max(r.sum(), 1e-12))
        # s² = mean((1 − r)·x² + r·(x − Δ)²)
        np.subtract(x, d, out=t)
        np.square(t, out=t)
        t *= r
        np.subtract(1, r, out=r)
        r *= x2
        r += t
        s = max(float(np.sqrt(r.sum() / x.size)), 1e-12)
    return s, d, w


def likelihood_ratio_scores(y: np.ndarray, noisy: bool = True) -> np.ndarray:
    """Per canary Σₜ log(1 − q + q·exp((yₜ − Δ/2)·Δ/s²)) with s, Δ and q = 2w fitted (inclusion
    is ½); without noise, the summed releases in units of the fitted step."""
    if y.size == 0:
        return np.zeros(y.shape[1])
    if not noisy:
        step = float(np.max(np.abs(y))) or 1.0
        return (y / step).sum(axis=0) - 0.5  # above 0: at least half a step seen
    s, d, w = fit_mixture(y)
    q = float(np.clip(2 * w, 1e-6, 1 - 1e-6))
    llr = y.astype(float)  # in place: log(1 − q) ⊕ (log q + clip((y − Δ/2)·Δ/s²)), 0 where y is
    llr -= d / 2
    llr *= d
    llr /= s**2
    np.clip(llr, -700, 700, out=llr)
    llr += np.log(q)
    np.logaddexp(np.log1p(-q), llr, out=llr)
    llr[y == 0] = 0.0
    return llr.sum(axis=0)


@dataclass
class ScalarCanaries:
    """dpzo's canaries. A release there is one noisy scalar (the clipped directional
    derivatives' sum), so canaries cannot own coordinates: each is a canary example whose
    clipped scalar is c·C with its own public, seeded sign code c = ±1 per release, sampled like
    any example. All canaries share each release, so the auditor scores canary j by
    Σₜ cⱼₜ·yₜ / C, yₜ the release less the real examples' clipped sum."""

    m: int
    seed: int
    rate: float
    clip: float
    noise_multiplier: float
    included: np.ndarray = field(init=False)
    scores: np.ndarray = field(init=False)
    steps: int = field(default=0, init=False)
    sampled: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.included = np.random.default_rng([self.seed, 0x67C]).random(self.m) < 0.5
        self.sampling = np.random.default_rng([self.seed, 0x5A3])
        self.codes = np.random.default_rng([self.seed, 0xC0D])
        self.scores = np.zeros(self.m)

    def draw(self) -> tuple[np.ndarray, torch.Tensor]:
        """(this release's sign codes, the sampled canaries' unclipped scalars ±RAW_SCALE·C)."""
        code = np.where(self.codes.random(self.m) < 0.5, -1.0, 1.0)
        active = self.included & (self.sampling.random(self.m) < self.rate)
        self.sampled += int(active.sum())
        return code, torch.from_numpy(code[active] * RAW_SCALE * self.clip)

    def observe(self, code: np.ndarray, y: float) -> None:
        self.scores += code * y / self.clip
        self.steps += 1

    def fraction_called_in(self) -> float:
        """These scores have no threshold of their own (a sum of correlations): guesses split
        half/half, inclusion's own probability."""
        return 0.5


def best_over_guesses(bound, scores: np.ndarray, included: np.ndarray, fraction_in: float, delta: float, level: float):
    """`bound`'s ε̂ (a one-run bound of (m, guesses, correct, δ, level)), best over GUESS_FRACTIONS of
    the canaries guessed (Bonferroni over them, so the best holds at `level`), with its ceiling."""
    m = scores.size
    pairs = guess_pairs(m, fraction_in)
    each = 1.0 - (1.0 - level) / len(pairs)
    best, ceiling = (0.0, 0, 0), 0.0
    for k_in, k_out in pairs:
        r, v = count_correct(guess_from_scores(scores, k_in, k_out), included)
        eps = bound(m, r, v, delta, each)
        if eps > best[0] or best[1] == 0:
            best = (eps, r, v)
        ceiling = max(ceiling, bound(m, r, r, delta, each))
    return {"epsilon": best[0], "guesses": best[1], "correct": best[2], "ceiling": ceiling, "m": m}


PLAN_CACHE = "planned-guesses.json"  # in $DPBENCH_CACHE, beside σ's calibration


@functools.lru_cache(maxsize=16)
def planned_guesses(m: int, sigma: float, rate: float, steps: int, delta: float, level: float) -> int:
    """The number of top-scored canaries guessed "in" by the f-DP bound, fixed before the real
    scores are read, from the claim alone (`_plan_guesses`). It depends on its arguments and that
    code alone, so it is kept on disk: a sweep's other seeds and methods at the same claim skip it."""
    if sigma <= 0:
        return max(1, m // 10)
    key = [int(m), repr(float(sigma)), repr(float(rate)), int(steps), repr(float(delta)), repr(float(level))]
    code = _plan_code()

    def plan() -> int:
        return _plan_guesses(m, sigma, rate, steps, delta, level)

    return plan() if code is None else remembered(PLAN_CACHE, [*key, PLAN_REPLICATES, code], plan, int)


def _plan_guesses(m: int, sigma: float, rate: float, steps: int, delta: float, level: float) -> int:
    """The count whose bound is best at the mean number of right guesses over PLAN_REPLICATES
    simulations of the claimed mechanism (each canary's T releases drawn as the claim says, scored
    by the exact likelihood ratio), rounded down. Near all-right one wrong guess moves a bound a
    lot, so each simulation's own best follows its luck; the mean, rounded down, follows the design."""
    fractions = (0.005, 0.01, 0.02, 0.05)
    counts = sorted({max(1, int(f * m)) for f in fractions})
    right = dict.fromkeys(counts, 0.0)
    for r in range(PLAN_REPLICATES):
        rng = np.random.default_rng([0x51, r])
        included = rng.random(m) < 0.5
        scores = np.zeros(m)
        for _ in range(steps):
            y = (included & (rng.random(m) < rate)) + sigma * rng.standard_normal(m)
            with np.errstate(divide="ignore"):  # rate 1: log(0) = -inf is exact here
                scores += np.logaddexp(np.log1p(-rate), np.log(rate) + (y - 0.5) / sigma**2)
        order = np.argsort(-scores)
        for k in counts:
            right[k] += included[order[:k]].sum() / PLAN_REPLICATES
    bound = {k: fdp_composed_bound(rate, steps, delta, m, k, math.floor(right[k]), level)[1] for k in counts}
    return max(counts, key=lambda k: bound[k])


@functools.cache
def _plan_code() -> str | None:
    """The planning code's fingerprint, in the cache's key: this module, the f-DP bound's
    (one_run_bounds, tradeoff), numpy's random streams and Opacus' PRV; an edit to any is planned
    again. Read once, when first planned. None where the sources are not installed: nothing is kept."""
    try:
        sources = [inspect.getsource(m) for m in (sys.modules[__name__], one_run_bounds, tradeoff)]
    except (OSError, TypeError):
        return None
    return hashlib.sha256("\n".join([np.__version__, opacus.__version__, *sources]).encode()).hexdigest()[:16]


def deferred_section(canaries, *args, **kwargs):
    """`whitebox_section` of these arguments, made when first called, with the canaries' (inclusion,
    scores): a method hands this to its TrainReport so the analysis runs after training is timed."""
    return lambda: (whitebox_section(canaries, *args, **kwargs), (canaries.included, canaries.scores))


def whitebox_section(
    canaries: GradientCanaries | ScalarCanaries,
    delta: float,
    accounted_epsilon: float | None,
    how: str,
    note: str | None = None,
    accounted_steps: int | None = None,
) -> dict:
    """The result's `audit.whitebox`: the one-run bounds (Steinke et al.; f-DP), each with its
    ceiling, the per-step parametric audit, and a violation flag from each."""
    if isinstance(canaries, ScalarCanaries):
        return _scalar_section(canaries, delta, accounted_epsilon, how, note)
    started = time.perf_counter()
    if canaries.released:
        canaries.finish()
    m, scores, included = canaries.m, canaries.scores, canaries.included
    fraction_in = canaries.fraction_called_in()
    level = {name: 1.0 - (1.0 - CONFIDENCE) * share for name, share in AUDIT_SHARES.items()}
    sub = slice(0, min(m, STEINKE_M))  # a subset fixed in advance, inclusion unread
    steinke = best_over_guesses(
        one_run_epsilon_lower_bound,
        scores[sub],
        included[sub],
        float(np.mean(scores[sub] > 0.0)),
        delta,
        level["steinke"],
    )
    # the claim under test is what the accountant counted, not what the auditor saw
    rate, sigma = canaries.rate, canaries.noise_multiplier
    steps = accounted_steps if accounted_steps is not None else canaries.steps
    k = planned_guesses(m, sigma, rate, steps, delta, level["fdp"]) if steps else 0
    top = np.argsort(-scores, kind="stable")[:k]
    correct = int(included[top].sum())
    sigma_hat, fdp = fdp_composed_bound(rate, steps, delta, m, k, correct, level["fdp"]) if k else (math.inf, 0.0)
    fdp_ceiling = fdp_composed_bound(rate, steps, delta, m, k, k, level["fdp"])[1] if k else 0.0
    parametric = None
    # on the model's own coordinates a pruned release is |known + y| < τ, which the likelihood does not model
    if sigma > 0 and canaries.steps and (canaries.placement == "audit-block" or not canaries.pruned):
        y, tau = canaries.observations()
        claimed = {"noise_std": sigma * canaries.clip, "clip_norm": canaries.clip, "sample_rate": rate, "steps": steps}
        parametric = parametric_section(
            y,
            tau,
            included,
            delta=delta,
            claimed=claimed,
            accounted_epsilon=accounted_epsilon,
            confidence=level["parametric"],
        )
    flags = {
        "steinke": accounted_epsilon is not None and steinke["epsilon"] > accounted_epsilon,
        # rejecting the claimed mechanism's own curve: the run is less private than it accounts
        "fdp": sigma > 0 and accounted_epsilon is not None and sigma_hat <= sigma,
        "parametric": bool(parametric and parametric["violation"]),
    }
    return {
        "m": int(m),
        "included": int(included.sum()),
        "seed": canaries.seed,
        "placement": canaries.placement,
        "epsilon_lower_bound": steinke["epsilon"],
        "steinke_m": steinke["m"],
        "guesses": steinke["guesses"],
        "correct": steinke["correct"],
        "ceiling": steinke["ceiling"],
        "epsilon_lower_bound_fdp": fdp,
        "fdp_null": "the run's own mechanism: T Poisson-subsampled Gaussian releases at its rate, sigma searched",
        "fdp_sigma": None if math.isinf(sigma_hat) else sigma_hat,
        "guesses_fdp": k,
        "correct_fdp": correct,
        "ceiling_fdp": fdp_ceiling,
        "epsilon_one_run": max(steinke["epsilon"], fdp),
        "parametric": parametric,
        "confidence": CONFIDENCE,
        "confidence_each": level,
        "guess_fractions": list(GUESS_FRACTIONS),
        "fraction_called_in": fraction_in,
        "steps_observed": canaries.steps,
        "canary_steps": canaries.sampled,
        "raw_norm": RAW_SCALE * canaries.clip,
        "score": SCORE,
        "inserted": how,
        "accounted_epsilon": accounted_epsilon,
        "flags": flags,
        "violation": any(flags.values()),
        "fdp_exceeds_accounted": flags["fdp"],
        "analysis_wall_s": time.perf_counter() - started,
        "note": note or (UTILITY_NOTE if canaries.placement == "model" else AUDIT_BLOCK_NOTE),
    }


def _scalar_section(canaries: ScalarCanaries, delta: float, accounted_epsilon, how: str, note: str | None) -> dict:
    """dpzo's: both bounds against (ε, δ) and its Gaussian, best over guess counts."""
    m, scores, included = canaries.m, canaries.scores, canaries.included
    fraction_in = canaries.fraction_called_in()
    level = 1.0 - (1.0 - CONFIDENCE) / 2  # each bound's share
    best = {
        name: best_over_guesses(bound, scores, included, fraction_in, delta, level)
        for name, bound in (("steinke", one_run_epsilon_lower_bound), ("fdp", fdp_epsilon_lower_bound))
    }
    epsilon = best["steinke"]["epsilon"]
    # Steinke et al.'s bound assumes only the (ε, δ) claim: above the accounted ε, the run is not
    # what it claims. The f-DP bound's null is the stronger Gaussian trade-off, so it only warns.
    violation = accounted_epsilon is not None and epsilon > accounted_epsilon
    gaussian_exceeded = accounted_epsilon is not None and best["fdp"]["epsilon"] > accounted_epsilon
    return {
        "m": int(m),
        "included": int(included.sum()),
        "seed": canaries.seed,
        "epsilon_lower_bound": epsilon,
        "guesses": best["steinke"]["guesses"],
        "correct": best["steinke"]["correct"],
        "ceiling": best["steinke"]["ceiling"],
        "epsilon_lower_bound_fdp": best["fdp"]["epsilon"],
        "guesses_fdp": best["fdp"]["guesses"],
        "correct_fdp": best["fdp"]["correct"],
        "ceiling_fdp": best["fdp"]["ceiling"],
        "confidence": CONFIDENCE,
        "epsilon_one_run": max(epsilon, best["fdp"]["epsilon"]),
        "fdp_null": "the Gaussian mechanism that is exactly (epsilon, delta)-DP",
        "guess_fractions": list(GUESS_FRACTIONS),
        "fraction_called_in": fraction_in,
        "steps_observed": canaries.steps,
        "canary_steps": canaries.sampled,
        "raw_norm": RAW_SCALE * canaries.clip,
        "score": SCALAR_SCORE,
        "inserted": how,
        "accounted_epsilon": accounted_epsilon,
        "violation": bool(violation),
        "fdp_exceeds_accounted": bool(gaussian_exceeded),
        "note": note or UTILITY_NOTE,
    }

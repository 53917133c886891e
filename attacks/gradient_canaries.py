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

from dataclasses import dataclass, field

import numpy as np
import torch

from dpbench.attacks.canary import count_correct, guess_from_scores, one_run_epsilon_lower_bound
from dpbench.attacks.canary_audit import CONFIDENCE, GUESS_FRACTIONS, guess_pairs
from dpbench.attacks.fdp import fdp_epsilon_lower_bound
from dpbench.errors import DpbenchError

RAW_SCALE = 10.0  # a canary's unclipped gradient norm, in units of C: clipping must act on it
SCORE = "log-likelihood ratio of the subsampled Gaussian on each released coordinate, real examples' sum removed"
UTILITY_NOTE = (
    "utility was measured on the run trained with the white-box gradient canaries (one coordinate "
    "each, sampled like an example)"
)


@dataclass
class GradientCanaries:
    """The canaries of one training run and the auditor's running scores."""

    m: int
    seed: int
    rate: float  # the per-step Poisson rate, the real examples' own
    clip: float  # C
    noise_multiplier: float  # σ (0: non-private)
    params: list[torch.nn.Parameter]
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
        flat = rng.choice(sum(sizes), size=self.m, replace=False)  # distinct coordinates
        offsets = np.cumsum([0, *sizes])
        owner = np.searchsorted(offsets, flat, side="right") - 1
        # per parameter: its canaries and their flat indices in it
        self.groups = [
            (i, torch.from_numpy(np.flatnonzero(owner == i)), torch.from_numpy(flat[owner == i] - offsets[i]))
            for i in range(len(self.params))
            if np.any(owner == i)
        ]
        self.sampling = np.random.default_rng([self.seed, 0x5A3])
        self.scores = np.zeros(self.m)
        self.known = np.zeros(self.m)

    # -- the mechanism's side --------------------------------------------------------------
    def draw(self) -> np.ndarray:
        """The canaries that enter this step: included and Poisson-sampled at the run's rate."""
        active = np.flatnonzero(self.included & (self.sampling.random(self.m) < self.rate))
        self.sampled += active.size
        return active

    def rows(self, active: np.ndarray, scale: float) -> list[torch.Tensor]:
        """Per parameter, the per-example gradients of `active` canaries: row k holds `scale`
        on canary active[k]'s coordinate, zeros elsewhere."""
        position = {int(c): k for k, c in enumerate(active)}
        out = [torch.zeros((len(active), p.numel()), dtype=p.dtype, device=p.device) for p in self.params]
        for i, ids, coords in self.groups:
            for c, j in zip(ids.tolist(), coords.tolist()):
                if c in position:
                    out[i][position[c], j] = scale
        return [r.view(len(active), *p.shape) for r, p in zip(out, self.params)]

    def add_to(self, tensors: list[torch.Tensor | None], active: np.ndarray, value: float) -> None:
        """Add `value` at each active canary's coordinate (a clipped canary entering a sum)."""
        chosen = set(active.tolist())
        for i, ids, coords in self.groups:
            keep = [k for k, c in enumerate(ids.tolist()) if c in chosen]
            if keep:
                tensors[i].view(-1)[coords[keep]] += value

    def gather(self, tensors: list[torch.Tensor | None], scale: float = 1.0) -> np.ndarray:
        """Every canary's coordinate of `tensors` (one per parameter; None reads as zeros)."""
        out = np.zeros(self.m)
        for i, ids, coords in self.groups:
            if tensors[i] is not None:
                out[ids.numpy()] = tensors[i].detach().reshape(-1)[coords].double().cpu().numpy() * scale
        return out

    # -- the auditor's side ----------------------------------------------------------------
    def fraction_called_in(self) -> float:
        """The share of canaries the scores alone call "in": likelihood ratio above 1 (the
        test at inclusion's prior ½); without noise, more than half a canary's step. Guesses
        split this way are right at every count when the scores separate, whatever the
        binomial number of included canaries (a half/half split must then err at the full
        count); it reads no inclusion, so the bound stays sound."""
        return float(np.mean(self.scores > (0.0 if self.noise_multiplier > 0 else 0.5)))

    def remember_known(self, known: np.ndarray) -> None:
        """The real examples' clipped sum at the canary coordinates this step."""
        self.known = known

    def observe(self, released: np.ndarray) -> None:
        """One step's released noisy sum at the canary coordinates (before averaging)."""
        y = released - self.known
        kept = released != 0  # update pruning zeroed the rest: no evidence there this step
        c, sigma, q = self.clip, self.noise_multiplier, self.rate
        if sigma > 0:
            z = (y - c / 2) * c / (sigma * c) ** 2
            llr = np.logaddexp(np.log1p(-q), np.log(q) + z)  # q = 1: log(0) = -inf is exact here
        else:
            llr = y / c
        self.scores += np.where(kept, llr, 0.0)
        self.steps += 1


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


def whitebox_section(
    canaries: GradientCanaries | ScalarCanaries,
    delta: float,
    accounted_epsilon: float | None,
    how: str,
    note: str | None = None,
) -> dict:
    """The result's `audit.whitebox`: both bounds with their ceilings and a violation flag."""
    m, scores, included = canaries.m, canaries.scores, canaries.included
    fraction_in = canaries.fraction_called_in()
    pairs = guess_pairs(m, fraction_in)
    level = 1.0 - (1.0 - CONFIDENCE) / (2 * len(pairs))  # Bonferroni over guess counts and both bounds
    best = {"steinke": (0.0, 0, 0), "fdp": (0.0, 0, 0)}
    ceiling = {"steinke": 0.0, "fdp": 0.0}
    for k_in, k_out in pairs:
        r, v = count_correct(guess_from_scores(scores, k_in, k_out), included)
        for name, bound in (("steinke", one_run_epsilon_lower_bound), ("fdp", fdp_epsilon_lower_bound)):
            eps = bound(m, r, v, delta, level)
            if eps > best[name][0] or best[name][1] == 0:
                best[name] = (eps, r, v)
            ceiling[name] = max(ceiling[name], bound(m, r, r, delta, level))
    epsilon = best["steinke"][0]
    # Steinke et al.'s bound assumes only the (ε, δ) claim: above the accounted ε, the run is not
    # what it claims. The f-DP bound's null is the stronger Gaussian trade-off, so it only warns.
    violation = accounted_epsilon is not None and epsilon > accounted_epsilon
    gaussian_exceeded = accounted_epsilon is not None and best["fdp"][0] > accounted_epsilon
    return {
        "m": int(m),
        "included": int(included.sum()),
        "seed": canaries.seed,
        "epsilon_lower_bound": epsilon,
        "guesses": best["steinke"][1],
        "correct": best["steinke"][2],
        "ceiling": ceiling["steinke"],
        "epsilon_lower_bound_fdp": best["fdp"][0],
        "guesses_fdp": best["fdp"][1],
        "correct_fdp": best["fdp"][2],
        "ceiling_fdp": ceiling["fdp"],
        "confidence": CONFIDENCE,
        "guess_fractions": list(GUESS_FRACTIONS),
        "fraction_called_in": fraction_in,
        "steps_observed": canaries.steps,
        "canary_steps": canaries.sampled,
        "raw_norm": RAW_SCALE * canaries.clip,
        "score": SCORE,
        "inserted": how,
        "accounted_epsilon": accounted_epsilon,
        "violation": bool(violation),
        "fdp_exceeds_accounted": bool(gaussian_exceeded),
        "note": note or UTILITY_NOTE,
    }

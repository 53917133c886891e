"""The DP bug zoo: realistic faults in a DP-SGD implementation, injected into the real code path,
for the audits' tests and `benchmarks/bug_zoo.py` only.

No spec field, option or flag reaches these. Inside `with broken_mechanism(name)`, what
`dpsgd.make_private` returns (Opacus' optimizer, loader, accountant) is altered so that the run
still *claims* the calibrated σ, rate and steps (the accountant reads them as before) while it
does something else. Each fault says what it does, and its true ε where that can be computed,
so the zoo can set every audit's ε̂ beside it.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader

from dpbench.attacks.tradeoff import SIGMA_FLOOR
from dpbench.methods import dpsgd
from dpbench.registry import Registry


@dataclass(frozen=True)
class Fault:
    description: str
    inject: Callable  # (model, Private) -> None, altering the private training in place
    # (σ, q, steps, δ, expected batch) of the claim -> the run's true ε (inf: unbounded)
    true_epsilon: Callable[[float, float, int, float, float], float]
    # why a one-run white-box audit on the audit block cannot see it, where it cannot
    unseen_by_canaries: str | None = None


FAULTS: Registry[Fault] = Registry("fault")


def _prv(sigma: float, rate: float, steps: int, delta: float) -> float | None:
    from dpbench.privacy import spent_epsilon

    if sigma < SIGMA_FLOOR:  # the PRV grid outgrows memory: RDP's (looser) figure, still far above any claim
        return spent_epsilon(noise_multiplier=sigma, delta=delta, sample_rate=rate, steps=steps, accountant="rdp")
    return spent_epsilon(noise_multiplier=sigma, delta=delta, sample_rate=rate, steps=steps, accountant="prv")


def _register(name: str, fault: Fault) -> None:
    FAULTS.register(name)(fault)


def _scale_noise(factor: Callable[[object], float]):
    def inject(model, private) -> None:
        optimizer = private.optimizer
        add_noise = optimizer.add_noise

        def weak_noise() -> None:
            claimed = optimizer.noise_multiplier
            optimizer.noise_multiplier = claimed * factor(optimizer)
            try:
                add_noise()
            finally:
                optimizer.noise_multiplier = claimed  # what the accountant reads

        optimizer.add_noise = weak_noise

    return inject


for f in (0.5, 0.1):
    _register(
        f"noise-x{f}",
        Fault(
            f"adds {f} times the noise it accounts for",
            _scale_noise(lambda opt, f=f: f),
            lambda s, q, t, d, b, f=f: _prv(s * f, q, t, d),
        ),
    )

_register(
    "noise-over-batch-twice",
    Fault(
        "divides the noise by the expected batch size once more (the mean's division applied to it twice)",
        _scale_noise(lambda opt: 1.0 / opt.expected_batch_size),
        lambda s, q, t, d, b: _prv(s / b, q, t, d),
    ),
)


def _clip_at(multiple: float):
    def inject(model, private) -> None:
        optimizer = private.optimizer
        clip_and_accumulate = optimizer.clip_and_accumulate

        def wide_clip() -> None:
            claimed = optimizer.max_grad_norm
            optimizer.max_grad_norm = claimed * multiple
            try:
                clip_and_accumulate()
            finally:
                optimizer.max_grad_norm = claimed  # the noise is still σ·C

        optimizer.clip_and_accumulate = wide_clip

    return inject


_register(
    "clip-4c",
    Fault(
        "clips per-example gradients at 4C while the noise stays σ·C",
        _clip_at(4.0),
        lambda s, q, t, d, b: _prv(s / 4, q, t, d),
    ),
)


def _skip_clipping(group: str):
    def inject(model, private) -> None:
        prefixes = model.PARAMETER_GROUPS[group]
        # Opacus' GradSampleModule prefixes names with `_module.`; the parameters are the same objects
        unclipped = {id(p) for name, p in model.model.named_parameters() if name.startswith(prefixes)}
        optimizer = private.optimizer
        params = [p for p in optimizer.params if id(p) in unclipped]
        if not params:
            raise ValueError("the group to leave unclipped has no trainable parameters")
        clip_and_accumulate = optimizer.clip_and_accumulate

        def partly_clipped() -> None:
            before = {p: None if p.summed_grad is None else p.summed_grad.clone() for p in params}
            raw = {p: optimizer._get_flat_grad_sample(p).sum(0) for p in params}
            clip_and_accumulate()
            for p in params:  # this call's contribution, unclipped
                p.summed_grad = raw[p] if before[p] is None else before[p] + raw[p]

        optimizer.clip_and_accumulate = partly_clipped

    return inject


_register(
    "clip-skip-language-model",
    Fault(
        "skips clipping on one parameter group (the language model's per-example gradients summed raw)",
        _skip_clipping("language_model"),
        lambda s, q, t, d, b: math.inf,  # unbounded sensitivity
        "the audit block is clipped correctly: only canaries on the skipped group's own coordinates "
        "(--canary-placement model) pass through the fault",
    ),
)


def _shuffled_batches(model, private) -> None:
    """Fixed-size batches of a shuffled epoch, while the accountant still assumes Poisson sampling."""
    loader = private.loader
    n = len(loader.dataset)
    size = max(1, round(loader.sample_rate * n))
    shuffled = DataLoader(
        loader.dataset, batch_size=size, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True
    )
    shuffled.sample_rate = loader.sample_rate
    private.loader = shuffled


def _no_amplification(s: float, q: float, t: int, d: float, b: float) -> float:
    """Each example in one batch per epoch: ⌈t·q⌉ Gaussian releases at full sensitivity, no
    amplification by sampling (an upper bound; Chua et al. 2024 find shuffling close to it)."""
    from scipy import optimize, stats

    mu = math.sqrt(math.ceil(t * q)) / s

    def excess(eps: float) -> float:
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - d

    return float(optimize.brentq(excess, 0.0, 500.0))


_register(
    "shuffled-batches",
    Fault(
        "samples fixed-size batches of a shuffled epoch, accounted as Poisson sampling",
        _shuffled_batches,
        _no_amplification,
        "the canaries are Poisson-sampled by the audit itself, not by the training loader, so their "
        "releases follow the claim; catching it needs canaries drawn by the loader (each would then show "
        "up exactly once an epoch), which would change how the real examples are batched",
    ),
)


def _half_steps(model, private) -> None:
    accountant = private.engine.accountant
    step, calls = accountant.step, [0]

    def every_other(**kwargs) -> None:
        calls[0] += 1
        if calls[0] % 2:
            step(**kwargs)

    accountant.step = every_other


_register(
    "half-steps-accounted",
    Fault("accounts ε for half the steps it trains", _half_steps, lambda s, q, t, d, b: _prv(s, q, t, d)),
)


@contextmanager
def broken_mechanism(name: str) -> Iterator[Fault]:
    """Within this context every `dpsgd.make_private` returns a private training with fault `name`."""
    fault = FAULTS.get(name)
    real = dpsgd.make_private

    def make_private(model, *args, **kwargs):
        private = real(model, *args, **kwargs)
        fault.inject(model, private)
        return private

    dpsgd.make_private = make_private
    try:
        yield fault
    finally:
        dpsgd.make_private = real

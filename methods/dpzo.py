"""DP-ZO (Tang et al. 2024): private zeroth-order fine-tuning, MeZO-style, forward passes only.

One release: draw a Poisson sample (rate q = batch_size / n) and a seed; move the trainable
parameters in place to θ + μz, then θ − μz (z ~ N(0, I) regenerated from the seed, never
stored), and take each example's central difference (L₊ − L₋) / 2μ. Each scalar is clipped
to [−C, C], the sum gets N(0, σ²C²) noise: a 1-D subsampled Gaussian mechanism with
sensitivity C. The update is −lr · (noisy sum / expected batch size) · z.

With `directions = k`, a step makes k releases, each with *its own* Poisson sample, seed and
noise, and applies the average of the k updates. The k releases are then k independent
subsampled Gaussians and compose as steps·k releases. Sharing one sample across the k
directions would instead release a k-vector of L2 sensitivity √k·C per sample: at q = 0.064,
150 steps, ε = 8 calibrated as 2·150 releases, that mechanism really spends ε ≈ 12.4.

Randomness: three streams, independent of each other. The Poisson sampling and the DP noise
come from generators of their own, never from the perturbation generator nor the global one;
with `secure_rng` both come from the OS's CSPRNG (`os.urandom`). Perturbation seeds are
data-independent and reproducible from the spec's seed. Each ± pair of forward passes runs
under the same global RNG state (common random numbers), so a stochastic forward (dropout,
noisy token pruning) does not swamp the finite difference.

Float restore: θ + μz − 2μz + μz is exact only up to rounding (three roundings of at most
half an ulp each); tests bound the error by that, and it does not accumulate in a direction.
The learning rate is the method option `lr` (plain SGD along z; spec.training.lr is Adam's
and is not used); the result's `training.details` records it.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from dpbench.attacks.gradient_canaries import ScalarCanaries, deferred_section
from dpbench.checks import check_count, finite
from dpbench.distributed import World, world
from dpbench.errors import DpbenchError
from dpbench.memory_breakdown import note_saved_activations
from dpbench.methods.base import METHODS, Method, TrainReport
from dpbench.output import note
from dpbench.privacy import SEEDED_NOISE, PrivacyReport, calibrate_noise, spent_epsilon
from dpbench.training_loop import TrainingLoop, chunks, trainable_parameters

LR_SCHEDULES = ("constant", "linear")


class RandomStream:
    """Uniforms and standard normals from one generator of its own: torch's, seeded
    (reproducible), or with `seed=None` the OS's CSPRNG, normals made robust to
    floating-point attacks as Opacus' secure mode does (sum of four normals, halved)."""

    def __init__(self, seed: int | None):
        self.secure = seed is None
        self._torch = None if self.secure else torch.Generator().manual_seed(seed)
        self._os = random.SystemRandom() if self.secure else None

    def uniform(self, n: int) -> torch.Tensor:
        if not self.secure:
            return torch.rand(n, generator=self._torch, dtype=torch.float64)
        bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
        return torch.from_numpy(bits.astype(np.float64) * 2.0**-53)

    def normal(self, n: int) -> torch.Tensor:
        if not self.secure:
            return torch.randn(n, generator=self._torch, dtype=torch.float64)
        return torch.tensor(
            [sum(self._os.gauss(0.0, 1.0) for _ in range(4)) / 2 for _ in range(n)], dtype=torch.float64
        )


def streams(seed: int, secure: bool) -> tuple[RandomStream, torch.Generator, RandomStream]:
    """(sampling, perturbation seeds, noise): independent streams spawned from the run seed."""
    sampling, perturbation, noise = (
        int(s.generate_state(1, np.uint64)[0]) for s in np.random.SeedSequence(seed).spawn(3)
    )
    return (
        RandomStream(None if secure else sampling),
        torch.Generator().manual_seed(perturbation),
        RandomStream(None if secure else noise),
    )


def poisson_sample(stream: RandomStream, n: int, rate: float) -> list[int]:
    """Each of n examples independently with probability `rate` (DP-SGD's Poisson sampling)."""
    return (stream.uniform(n) < rate).nonzero().flatten().tolist()


def perturb_(params: Sequence[torch.Tensor], seed: int, scale: float) -> None:
    """θ += scale · z in place, z ~ N(0, I) regenerated from `seed` (same z for the same seed)."""
    gen = torch.Generator(device=params[0].device).manual_seed(seed)
    with torch.no_grad():
        for p in params:
            z = torch.randn(p.shape, generator=gen, device=gen.device, dtype=p.dtype)
            p.add_(z.to(p.device), alpha=scale)


class Difference(NamedTuple):
    derivative: torch.Tensor  # (B,) float64: (L₊ − L₋) / 2μ per example
    loss: torch.Tensor  # (B,) float64: (L₊ + L₋) / 2 per example, ≈ L(θ), for the loss curve


def central_difference(
    loss: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    seed: int,
    mu: float,
    common_seed: int,
    generators: Sequence[torch.Generator] = (),
) -> Difference:
    """Per-example directional derivatives along z(seed); θ is restored (up to rounding) even on error.

    Both passes see the same random numbers: the global generators are seeded with
    `common_seed` (and restored afterwards), `generators` (a stochastic module's own) are
    rewound to their state before the first pass."""
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    states = [g.get_state() for g in generators]

    def evaluate() -> torch.Tensor:
        for g, state in zip(generators, states):
            g.set_state(state)
        # the memory breakdown counts the pass: under no_grad autograd saves nothing for backward
        with torch.random.fork_rng(devices=devices), torch.no_grad(), note_saved_activations():
            torch.default_generator.manual_seed(common_seed)  # the same randomness in both passes
            for d in devices:
                torch.cuda.default_generators[d].manual_seed(common_seed)
            return loss().double()

    offset = 0.0
    try:
        perturb_(params, seed, mu)
        offset = mu
        plus = evaluate()
        perturb_(params, seed, -2 * mu)
        offset = -mu
        minus = evaluate()
    finally:
        perturb_(params, seed, -offset)
    return Difference((plus - minus) / (2 * mu), (plus + minus) / 2)


@dataclass
class StepResult:
    noisy_sums: list[float]  # one DP release per direction
    loss_sum: float  # sum over every evaluated example of ≈ L(θ)
    examples: int
    clipped: int  # scalars that hit ±C


def dpzo_step(
    params: Sequence[torch.Tensor],
    batches: Sequence[Sequence[int]],
    seeds: Sequence[int],
    encode: Callable[[list[int]], object],
    loss: Callable[[object], torch.Tensor],
    *,
    mu: float,
    clip: float,
    noise_std: float,
    noise: RandomStream,
    lr: float,
    expected_batch_size: float,
    physical_batch_size: int,
    generators: Sequence[torch.Generator] = (),
    canaries: ScalarCanaries | None = None,
    ranks: World | None = None,
) -> StepResult:
    """One DP-ZO step: a release per (batch, seed) pair, then θ −= lr · mean_j(noisy_j / B) · z_j.
    Across ranks each evaluates its share of the batch, the clipped sums are all-reduced and rank
    0's noisy release (noise drawn once) is every rank's; `out`'s counts are this rank's."""
    out, ranks = StepResult([], 0.0, 0, 0), ranks or World()
    for batch, seed in zip(batches, seeds, strict=True):
        total = 0.0
        code, raw = canaries.draw() if canaries is not None else (None, None)
        mine = ranks.shard(list(batch))
        for part in chunks(mine, physical_batch_size):  # bounded memory
            encoded = encode(part)
            d = central_difference(lambda: loss(encoded), params, seed, mu, common_seed=seed + 1, generators=generators)
            total += float(d.derivative.clamp(-clip, clip).sum())
            out.clipped += int((d.derivative.abs() > clip).sum())
            out.loss_sum += float(d.loss.sum())
            out.examples += len(part)
        if ranks.distributed:
            # a ± round trip restores θ only up to rounding: every rank makes as many as rank 0
            # (the largest shard), so the ranks' parameters stay bit-identical
            most = math.ceil(math.ceil(len(batch) / ranks.size) / physical_batch_size)
            for _ in range(most - math.ceil(len(mine) / physical_batch_size)):
                for scale in (mu, -2 * mu, mu):
                    perturb_(params, seed, scale)
            total = ranks.sum_floats(total)[0]
        known = total  # the real examples' clipped sum, which the white-box auditor may know
        if raw is not None:  # the sampled canaries' scalars, clipped as the examples' are
            total += float(raw.clamp(-clip, clip).sum())
        noisy = total + noise_std * float(noise.normal(1)[0]) if ranks.main else None
        out.noisy_sums.append(ranks.broadcast(noisy))
        if canaries is not None:
            canaries.observe(code, out.noisy_sums[-1] - known)
    for seed, noisy in zip(seeds, out.noisy_sums):
        perturb_(params, seed, -lr * noisy / expected_batch_size / len(seeds))
    return out


def learning_rate(lr: float, schedule: str, step: int, steps: int) -> float:
    return lr if schedule == "constant" else lr * (1 - step / steps)


@METHODS.register("dpzo")
class DPZO(Method):
    """DP zeroth-order optimisation: two forward passes per example and direction, no autograd."""

    # lr: SGD step along z (spec.training.lr is Adam's and is not used); lr and mu chosen on the
    # embedded default's validation split (README, "Learning rates and dualpriv's defaults")
    default_lr = None
    options = {"directions": 1, "mu": 1e-3, "lr": 3e-3, "lr_schedule": "constant", "secure_rng": False}
    spec_records_options = True  # lr's default moved from 1e-2

    def __init__(self, **options):
        super().__init__(**options)
        o = self.opts
        check_count("dpzo: directions", o["directions"])
        for name in ("mu", "lr"):
            if not (finite(o[name]) and o[name] > 0):
                raise DpbenchError(f"dpzo: {name} must be a positive finite number, got {o[name]!r}")
        if o["lr_schedule"] not in LR_SCHEDULES:
            raise DpbenchError(f"dpzo: lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {o['lr_schedule']!r}")

    def passes_per_example(self) -> tuple[int, int]:
        return 2 * self.opts["directions"], 0  # θ + μz and θ − μz per direction, no autograd

    def train(self, model, data, spec, delta) -> TrainReport:
        t, p, o = spec.training, spec.privacy, self.opts
        k, n = o["directions"], len(data)
        rate = t.batch_size / n
        if p.epsilon is None or rate > 1:
            raise DpbenchError(
                f"dpzo needs a target ε and batch_size ≤ n_train ({n}); got ε={p.epsilon}, batch_size={t.batch_size}"
            )
        sigma = calibrate_noise(
            target_epsilon=p.epsilon, delta=delta, sample_rate=rate, steps=t.steps * k, accountant=p.accountant
        )
        params = trainable_parameters(model.model)
        if not params:
            raise DpbenchError("dpzo: the model has no trainable parameters")
        # installed visual-token pruning may draw from a generator of its own: share it across ± passes
        pruner = getattr(model, "token_pruner", None)
        generators = [g for g in (getattr(pruner, "generator", None),) if isinstance(g, torch.Generator)]
        canaries = None
        if spec.audit.gradient_canaries:
            canaries = ScalarCanaries(spec.audit.gradient_canaries, t.seed, rate, p.max_grad_norm, sigma)
        sampling, perturbation, noise = streams(t.seed, o["secure_rng"])
        w = world()
        if not o["secure_rng"]:
            note(SEEDED_NOISE)
        loop, clipped = TrainingLoop(), 0  # no global seed: every draw comes from the streams above

        def encode(idx: list[int]) -> dict:
            batch = model.encode([data[i] for i in idx], [data[i].target for i in idx])
            loop.count(batch)
            return batch

        model.model.train()  # as the other methods train; the ± passes share their randomness
        with loop.running(f"training (DP-ZO, σ={sigma:.3f}, k={k})", t.steps):
            for step in range(t.steps):
                batches = [poisson_sample(sampling, n, rate) for _ in range(k)]
                seeds = torch.randint(2**62, (k,), generator=perturbation).tolist()
                batches, seeds = w.broadcast((batches, seeds))  # one sample, split across the ranks
                lr = learning_rate(o["lr"], o["lr_schedule"], step, t.steps)
                r = dpzo_step(
                    params,
                    batches,
                    seeds,
                    encode,
                    model.per_example_loss,
                    mu=o["mu"],
                    clip=p.max_grad_norm,
                    noise_std=sigma * p.max_grad_norm,
                    noise=noise,
                    lr=lr,
                    expected_batch_size=t.batch_size,
                    physical_batch_size=t.physical_batch_size,
                    generators=generators,
                    canaries=canaries,
                    ranks=w,
                )
                loss_sum, rank_clipped = w.sum_floats(r.loss_sum, r.clipped)
                clipped += int(rank_clipped)
                loop.end_step(loss_sum / (k * t.batch_size))
        model.model.eval()
        report = self.privacy_report(spec, delta, sigma, rate)
        return TrainReport(
            steps=t.steps,
            epochs=t.steps * k * rate,
            losses=loop.losses,
            privacy=report,
            samples=loop.samples,
            tokens=loop.tokens,
            details=self.details(clipped / max(1, w.sum_floats(loop.samples)[0])),
            whitebox_audit=self.whitebox(canaries, delta, epsilon=report.epsilon) if canaries is not None else None,
        )

    @staticmethod
    def whitebox(canaries: ScalarCanaries, delta: float, epsilon: float):
        signal = canaries.rate * canaries.steps
        noise = (canaries.steps * (canaries.noise_multiplier**2 + canaries.rate * canaries.m / 2)) ** 0.5
        note = (
            f"dpzo releases one scalar per direction and step, so all {canaries.m} canaries share each release: "
            f"an included canary's expected score is {signal:.1f} against a spread of about {noise:.1f} from the "
            "noise and the other canaries, so this one-run audit is weak by design and its bound near 0 is no "
            "evidence of privacy beyond the accounting; utility was measured with these canaries in training"
        )
        route = "a canary example whose scalar is +-RAW_SCALE*C (its own public sign per release), clipped to [-C, C]"
        return deferred_section(canaries, delta, epsilon, route, note=note)

    def privacy_report(self, spec, delta: float, sigma: float, rate: float) -> PrivacyReport:
        t, p, k = spec.training, spec.privacy, self.opts["directions"]
        epsilon = spent_epsilon(
            noise_multiplier=sigma, delta=delta, sample_rate=rate, steps=t.steps * k, accountant=p.accountant
        )
        notes = (
            "per release: a 1-D sum of per-example finite differences clipped to [-C, C], sensitivity C",
            "each of the k directions of a step has its own Poisson sample: steps*k composed releases",
            "noise and sampling from the OS CSPRNG"
            if self.opts["secure_rng"]
            else "noise and sampling from torch generators seeded by the spec's seed: reproducible, not for deployment",
        )
        rdp = None
        if p.accountant != "rdp":  # the looser figure beside the headline, as for DP-SGD
            rdp = spent_epsilon(
                noise_multiplier=sigma, delta=delta, sample_rate=rate, steps=t.steps * k, accountant="rdp"
            )
        return PrivacyReport.released(
            spec,
            epsilon=epsilon,
            epsilon_rdp=rdp,
            delta=delta,
            noise_multiplier=sigma,
            sample_rate=rate,
            steps=t.steps,
            releases_per_step=k,
            notes=notes,
        )

    def details(self, clipped_fraction: float) -> dict:
        o = self.opts
        return {
            "directions": o["directions"],
            "mu": o["mu"],
            "lr": o["lr"],
            "lr_schedule": o["lr_schedule"],
            "lr_source": "method option lr (SGD along z); spec.training.lr not used",
            "perturbation": "gaussian N(0, I) over every trainable parameter, regenerated from a seed",
            "update": "theta -= lr * mean_j(noisy_sum_j / batch_size) * z_j",
            "sampling": "independent Poisson sample per direction",
            "forward_passes_per_example": 2,
            "clipped_fraction": clipped_fraction,
            "secure_rng": o["secure_rng"],
        }

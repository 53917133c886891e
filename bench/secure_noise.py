"""DP noise and Poisson sampling from the operating system's CSPRNG (`os.urandom`), for the
Opacus methods' `secure_rng` option.

Opacus' own secure mode needs torchcsprng, which has no build for current torch; this module
gives an Opacus optimizer and loader the same two things from `os.urandom` instead:

- noise: `use_secure_noise(optimizer)` replaces the optimizer's `add_noise` with one that does
  what Opacus' does (σ·C from its `noise_multiplier` and `max_grad_norm`, the
  processed-gradient checks, noise on rank 0 alone across processes), drawing the Gaussian
  from `os.urandom` by Box-Muller. As Opacus' secure mode does against floating-point attacks
  (Holohan et al., arXiv:2107.10138, section 5.1; Opacus' `_generate_noise`), each value is the
  sum of four standard normals, halved, computed in float64 before it is cast.
- sampling: `PoissonSampler` with `OS_RANDOM` draws each logical batch, every example in
  independently with the loader's rate, from `os.urandom`.

Nothing here is seeded: two runs of the same spec differ, as they must.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from opacus.optimizers import DistributedDPOptimizer, DPOptimizer
from opacus.optimizers.ddpoptimizer_fast_gradient_clipping import DistributedDPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.optimizers.optimizer_fast_gradient_clipping import DPOptimizerFastGradientClipping
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader

from dpbench.errors import DpbenchError

GENERATOR = "os.urandom (CSPRNG)"  # what a result's privacy notes name
CHUNK = 2**20  # noise values per round of os.urandom: bounds the scratch memory of a large tensor
# the Opacus optimizers whose add_noise `use_secure_noise` reproduces; distributed: rank 0 adds it
LOCAL = (DPOptimizer, DPOptimizerFastGradientClipping)
DISTRIBUTED = (DistributedDPOptimizer, DistributedDPOptimizerFastGradientClipping)


class OsRandom:
    """The OS's CSPRNG, where a `torch.Generator` would otherwise be passed."""

    def uniform(self, n: int) -> np.ndarray:
        """n uniforms in [0, 1), each from 53 random bits (a float64's precision)."""
        bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
        return bits.astype(np.float64) * 2.0**-53

    def normal(self, n: int) -> np.ndarray:
        """n standard normals (float64) by Box-Muller: two per pair of uniforms."""
        pairs = (n + 1) // 2
        u = self.uniform(2 * pairs)
        radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))  # log(1 - u), u in [0, 1): finite
        angle = 2.0 * math.pi * u[pairs:]
        return np.concatenate((radius * np.cos(angle), radius * np.sin(angle)))[:n]  # independent halves

    def gaussian(self, shape: torch.Size, std: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """N(0, std²) noise of `shape`: each value the sum of four standard normals, halved, times std."""
        n = math.prod(shape)
        if std == 0:
            return torch.zeros(shape, dtype=dtype, device=device)
        out = torch.empty(n, dtype=dtype)  # filled a chunk at a time, in float64 until each is cast
        for start in range(0, n, CHUNK):
            k = min(CHUNK, n - start)
            out[start : start + k] = torch.from_numpy(self.normal(4 * k).reshape(4, k).sum(axis=0) * (std / 2))
        return out.reshape(shape).to(device)


OS_RANDOM = OsRandom()


def poisson_mask(n: int, rate: float, generator: torch.Generator | OsRandom) -> torch.Tensor:
    """Each of n examples in with probability `rate`, from `generator` (torch's, or `OS_RANDOM`)."""
    if isinstance(generator, OsRandom):
        return torch.from_numpy(generator.uniform(n) < rate)
    return torch.rand(n, generator=generator) < rate


class PoissonSampler(UniformWithReplacementSampler):
    """Opacus' Poisson sampler (each example in a logical batch with probability `sample_rate`),
    drawing from `generator`, which may be `OS_RANDOM`."""

    def __iter__(self):
        for _ in range(self.steps):
            yield poisson_mask(self.num_samples, self.sample_rate, self.generator).nonzero().reshape(-1).tolist()


def secure_loader(loader: DataLoader) -> DataLoader:
    """Opacus' Poisson loader `loader` (from `make_private`) sampling from the OS's CSPRNG: the
    same dataset, rate, number of batches per epoch and collate function (empty draws included)."""
    sampler = loader.batch_sampler
    if not isinstance(sampler, UniformWithReplacementSampler):
        raise DpbenchError(f"secure sampling: Opacus handed back a {type(sampler).__name__} loader")
    secure = DataLoader(
        loader.dataset,
        batch_sampler=PoissonSampler(
            num_samples=sampler.num_samples, sample_rate=sampler.sample_rate, generator=OS_RANDOM, steps=sampler.steps
        ),
        collate_fn=loader.collate_fn,
    )
    secure.sample_rate = loader.sample_rate
    return secure


def use_secure_noise(optimizer: DPOptimizer) -> DPOptimizer:
    """Make Opacus' `optimizer` draw its DP noise from the OS's CSPRNG (in place; returned)."""
    if type(optimizer) not in (*LOCAL, *DISTRIBUTED):
        raise DpbenchError(f"secure noise: no secure add_noise for Opacus' {type(optimizer).__name__}")
    distributed = isinstance(optimizer, DISTRIBUTED)

    def add_noise() -> None:  # Opacus' add_noise, the noise drawn from os.urandom
        if distributed and optimizer.rank != 0:  # as Opacus' distributed optimizers: rank 0 alone adds noise
            for p in optimizer.params:
                p.grad = p.summed_grad.view_as(p)
            return
        # ghost clipping's adaptive variant sets an adjusted multiplier; the accountant keeps noise_multiplier
        multiplier = getattr(optimizer, "_adjusted_noise_multiplier", optimizer.noise_multiplier)
        for p in optimizer.params:
            _check_processed_flag(p.summed_grad)
            g = p.summed_grad
            noise = OS_RANDOM.gaussian(g.shape, multiplier * optimizer.max_grad_norm, g.dtype, g.device)
            p.grad = (g + noise).view_as(p)
            _mark_as_processed(p.summed_grad)

    optimizer.add_noise = add_noise
    return optimizer

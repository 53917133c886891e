"""`secure_rng`: DP noise and Poisson sampling from os.urandom (dpbench.secure_noise), without
torchcsprng. The noise is N(0, (σC)²), unseeded (the same seed gives other noise), and reaches
Opacus' optimizer through dpsgd's own `make_private`, in both clipping modes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from opacus.optimizers import DPPerLayerOptimizer
from scipy import stats

from dpbench.errors import DpbenchError
from dpbench.methods.dpsgd import make_private, shard_loader
from dpbench.secure_noise import OS_RANDOM, PoissonSampler, poisson_mask, use_secure_noise
from dpbench.spec import RunSpec

SIGNIFICANCE = 1e-3  # a correct generator fails a test at this level once in a thousand runs
N = 100_000


def test_secure_gaussian_has_mean_zero_std_sigma_and_is_normal():
    std = 2.5
    x = OS_RANDOM.gaussian(torch.Size([N]), std, torch.float64, torch.device("cpu"))
    assert abs(float(x.mean())) < 4 * std / N**0.5
    assert float(x.std()) == pytest.approx(std, rel=4 / (2 * N) ** 0.5)
    assert stats.kstest(x.numpy() / std, "norm").pvalue > SIGNIFICANCE
    assert stats.normaltest(x.numpy()).pvalue > SIGNIFICANCE  # skew and kurtosis: the tails are a normal's
    u = OS_RANDOM.uniform(N)
    assert 0 <= u.min() and u.max() < 1 and stats.kstest(u, "uniform").pvalue > SIGNIFICANCE


def test_secure_draws_are_fresh_and_zero_std_is_zero():
    shape, cpu = torch.Size([3, 4]), torch.device("cpu")
    assert not torch.equal(
        OS_RANDOM.gaussian(shape, 1.0, torch.float32, cpu), OS_RANDOM.gaussian(shape, 1.0, torch.float32, cpu)
    )
    noise = OS_RANDOM.gaussian(shape, 0.0, torch.float32, cpu)
    assert noise.dtype == torch.float32 and noise.shape == shape and not noise.any()
    big = OS_RANDOM.gaussian(torch.Size([2**20 + 3]), 1.0, torch.float32, cpu)  # more than one chunk
    assert big.shape == (2**20 + 3,) and big[-3:].abs().sum() > 0


def released_noise(clipping: str, secure: bool, d: int = 4096, sigma: float = 1.5, clip: float = 0.5) -> torch.Tensor:
    """One DP step of dpsgd's make_private on a linear model whose per-example gradients are all
    zero (zero inputs): the released gradient, times its divisor, is the noise alone."""
    torch.manual_seed(0)  # the same seed every time: a seeded generator would repeat its draw
    b = 8
    spec = RunSpec().replace(**{"training.batch_size": b, "privacy.max_grad_norm": clip})
    model = SimpleNamespace(model=torch.nn.Linear(d, 1, bias=False))
    dp = make_private(model, 4 * b, spec, sigma, clipping=clipping, secure_rng=secure)
    per_example = dp.module(torch.zeros(b, d)).squeeze(1)
    dp.criterion(per_example).backward()
    assert dp.optimizer.pre_step()  # clip, sum, noise, scale
    (weight,) = dp.params
    return weight.grad.flatten() * dp.release_divisor() / (sigma * clip)


@pytest.mark.parametrize("clipping", ["per-sample", "ghost"])
def test_dpsgd_secure_noise_is_sigma_c_and_not_seeded(clipping):
    noise = released_noise(clipping, secure=True, d=N)
    assert abs(float(noise.mean())) < 4 / N**0.5
    assert float(noise.std()) == pytest.approx(1.0, rel=4 / (2 * N) ** 0.5)
    assert stats.kstest(noise.double().numpy(), "norm").pvalue > SIGNIFICANCE
    assert not torch.equal(released_noise(clipping, secure=True), released_noise(clipping, secure=True))
    # the check can fail: the seeded generator repeats its noise under the same seed
    assert torch.equal(released_noise(clipping, secure=False), released_noise(clipping, secure=False))


def test_dpsgd_secure_sampling_draws_poisson_batches_from_the_os():
    spec = RunSpec().replace(**{"training.batch_size": 10})
    model = SimpleNamespace(model=torch.nn.Linear(2, 1))
    dp = make_private(model, 100, spec, 1.0, clipping="per-sample", secure_rng=True)
    assert isinstance(dp.loader.batch_sampler, PoissonSampler) and dp.loader.batch_sampler.generator is OS_RANDOM
    assert dp.loader.sample_rate == pytest.approx(0.1)
    torch.manual_seed(0)
    first = [idx.tolist() for (idx,) in dp.loader]
    torch.manual_seed(0)
    assert first != [idx.tolist() for (idx,) in dp.loader]  # not torch's global generator
    sizes = torch.tensor([poisson_mask(1000, 0.1, OS_RANDOM).sum() for _ in range(400)], dtype=torch.float64)
    assert float(sizes.mean()) == pytest.approx(100, abs=4 * (90 / 400) ** 0.5)  # binomial(1000, 0.1)
    assert float(sizes.var()) == pytest.approx(90, rel=4 * (2 / 399) ** 0.5)


def test_use_secure_noise_refuses_an_optimizer_it_does_not_mirror():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = DPPerLayerOptimizer(
        torch.optim.SGD([param], lr=0.1), noise_multiplier=1.0, max_grad_norm=[1.0], expected_batch_size=1
    )
    with pytest.raises(DpbenchError, match="no secure add_noise"):
        use_secure_noise(optimizer)


@pytest.mark.slow
def test_distributed_sampling_draws_from_the_os_too(tmp_path):
    """Across processes each rank Poisson-samples its shard (dpsgd's ShardSampler): with
    OS_RANDOM, from os.urandom. A one-process gloo group stands in for the ranks."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        loader = shard_loader(1000, 0.1, OS_RANDOM)
        torch.manual_seed(0)
        first = [idx.tolist() for (idx,) in loader]
        torch.manual_seed(0)
        again = [idx.tolist() for (idx,) in loader]
    finally:
        torch.distributed.destroy_process_group()
    assert first != again and len(first) == 10
    sizes = torch.tensor([len(b) for b in first + again], dtype=torch.float64)
    assert float(sizes.mean()) == pytest.approx(100, abs=4 * (90 / 20) ** 0.5)

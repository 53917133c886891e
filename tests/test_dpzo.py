"""DP-ZO: restore after the ± passes, unbiased zeroth-order estimates, per-example clipping,
noise scale and independence, accounting of k directions, and the end-to-end wiring.
Each test would fail if that part were wrong. Statistical tests use fixed seeds and
tolerances of several standard errors from the normal / chi-square theory."""

from types import SimpleNamespace

import pytest
import torch

from dpbench.errors import DpbenchError
from dpbench.methods.base import METHODS
from dpbench.methods.dpzo import (
    DPZO,
    RandomStream,
    central_difference,
    dpzo_step,
    learning_rate,
    perturb_,
    poisson_sample,
    streams,
)
from dpbench.models.token_pruning import TokenPruning, install_token_pruning
from dpbench.privacy import spent_epsilon
from dpbench.spec import RunSpec

F32_EPS = torch.finfo(torch.float32).eps  # 2^-23: one ulp of 1.0


class Quadratic:
    """Stands in for a VisionLanguageModel: L_i(θ) = ½ (θ − c_i)ᵀ H (θ − c_i), θ split over two
    parameters. Records every θ it is evaluated at, the examples, and whether autograd was on."""

    def __init__(self, centres: torch.Tensor, h: torch.Tensor, dtype=torch.float64):
        self.model = torch.nn.Module()
        self.model.a = torch.nn.Parameter(torch.linspace(-1, 1, 3, dtype=dtype))
        self.model.b = torch.nn.Parameter(torch.tensor([0.5, -0.25], dtype=dtype))
        self.c, self.h = centres.to(dtype), (h.to(dtype) + h.to(dtype).T) / 2  # exactly symmetric
        self.seen_theta, self.seen_idx, self.grad_enabled = [], [], []

    def theta(self) -> torch.Tensor:
        return torch.cat([self.model.a, self.model.b])

    def encode(self, examples, targets=None) -> dict:
        idx = torch.tensor([e.i for e in examples], dtype=torch.long)
        return {"idx": idx, "attention_mask": torch.ones(len(examples), 3, dtype=torch.long)}

    def per_example_loss(self, batch: dict) -> torch.Tensor:
        theta = self.theta()
        self.seen_theta.append(theta.detach().clone())
        self.seen_idx.append(batch["idx"].tolist())
        self.grad_enabled.append(torch.is_grad_enabled())
        diff = theta - self.c[batch["idx"]]
        return 0.5 * ((diff @ self.h) * diff).sum(-1)

    def gradients(self) -> torch.Tensor:  # per-example ∇L_i, shape (n, d)
        return (self.theta().detach() - self.c) @ self.h


def examples(n: int):
    return [SimpleNamespace(i=i, target="A") for i in range(n)]


def quadratic(n=8, seed=0, dtype=torch.float64) -> Quadratic:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(5, 5, generator=g)
    return Quadratic(torch.randn(n, 5, generator=g) * 2, a @ a.T / 5 + torch.eye(5), dtype)


def step(model, batches, seeds, *, clip=float("inf"), noise_std=0.0, noise=None, lr=1.0, physical=3):
    return dpzo_step(
        list(model.model.parameters()),
        batches,
        seeds,
        lambda idx: model.encode([examples(100)[i] for i in idx]),
        model.per_example_loss,
        mu=1e-3,
        clip=clip,
        noise_std=noise_std,
        noise=noise or RandomStream(0),
        lr=lr,
        expected_batch_size=max(1, sum(map(len, batches)) / len(batches)),
        physical_batch_size=physical,
    )


@pytest.fixture
def fast_calibration(monkeypatch):
    """σ = 1.5 without the accountant's seconds-long search; records what was asked."""
    calls = []

    def calibrate(**kw):
        calls.append(kw)
        return 1.5

    monkeypatch.setattr("dpbench.methods.dpzo.calibrate_noise", calibrate)
    return calls


def spec(**changes) -> RunSpec:
    base = {"training.steps": 3, "training.batch_size": 4, "training.physical_batch_size": 3, "privacy.epsilon": 8.0}
    return RunSpec(method="dpzo").replace(**{**base, **changes})


# -- restoring θ -------------------------------------------------------------------------------
def test_parameters_are_restored_after_the_two_passes_up_to_three_roundings():
    """Restore from the seed is NOT bit-exact: θ + μz − 2μz + μz rounds three times in float32.
    Each rounding errs by at most half an ulp of a value of size ≤ |θ| + 2μ|z|, so the error
    is below 3·eps·(|θ| + 2μ|z|) per coordinate; a wrong sign or seed would miss by ~μ|z|."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    params = list(net.parameters())
    before = [p.detach().clone() for p in params]
    x = torch.randn(6, 16)
    mu, seed = 1e-2, 1234
    d = central_difference(lambda: net(x).squeeze(-1), params, seed, mu, common_seed=7)
    z = [torch.zeros_like(p) for p in params]
    perturb_(z, seed, 1.0)  # the same z, regenerated from the seed
    exact = 0
    for p, p0, zi in zip(params, before, z):
        bound = 3 * F32_EPS * (p0.abs() + 2 * mu * zi.abs())
        assert ((p.detach() - p0).abs() <= bound).all()
        exact += int((p.detach() == p0).sum())
    assert exact > 0.5 * sum(p.numel() for p in params)  # most coordinates do come back exactly
    assert d.derivative.shape == (6,) and not any(p.grad is not None for p in params)


def test_parameters_are_restored_when_a_forward_pass_fails():
    model = quadratic(dtype=torch.float32)
    params, before = list(model.model.parameters()), model.theta().detach().clone()
    calls = []

    def failing():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return model.per_example_loss(model.encode(examples(2)))

    with pytest.raises(RuntimeError):
        central_difference(failing, params, 3, 1e-2, common_seed=0)
    torch.testing.assert_close(model.theta().detach(), before, rtol=0, atol=4 * F32_EPS * 2)


# -- the zeroth-order estimate -----------------------------------------------------------------
def test_central_difference_is_the_directional_derivative_on_a_quadratic():
    model = quadratic()
    params = list(model.model.parameters())
    z = [torch.zeros_like(p) for p in params]
    perturb_(z, 42, 1.0)
    d = central_difference(lambda: model.per_example_loss(model.encode(examples(8))), params, 42, 1e-3, common_seed=0)
    # a central difference is exact for a quadratic: (L₊ − L₋)/2μ = ∇L_i · z
    torch.testing.assert_close(d.derivative, model.gradients() @ torch.cat(z), rtol=1e-8, atol=1e-9)


def test_expected_update_without_noise_or_clipping_is_minus_lr_times_the_gradient():
    """E[(∇L·z) z] = ∇L for z ~ N(0, I). Coordinate i of one estimate has variance
    |∇L|² + (∇L)_i², so the mean of N estimates lies within 5 standard errors."""
    model = quadratic()
    params = list(model.model.parameters())
    theta0 = [p.detach().clone() for p in params]
    grad = model.gradients().mean(0)
    n_seeds, lr = 2000, 0.5
    total = torch.zeros(5, dtype=torch.float64)
    for seed in range(n_seeds):
        step(model, [list(range(8))], [seed], lr=lr, physical=5)  # two physical batches: 5 + 3
        total += model.theta().detach() - torch.cat(theta0)
        with torch.no_grad():
            for p, p0 in zip(params, theta0):
                p.copy_(p0)
    mean = total / n_seeds
    se = torch.sqrt((grad.norm() ** 2 + grad**2) / n_seeds)
    assert ((mean + lr * grad).abs() <= 5 * lr * se).all()
    assert (mean.sign() == -grad.sign()).all()  # and not, say, zero or +∇L
    assert not any(model.grad_enabled)  # no autograd anywhere in a step


def test_both_passes_share_the_forward_randomness():
    """A stochastic forward (dropout, noisy or random token pruning) must not leak into the
    difference: with common random numbers it stays the exact directional derivative."""
    model, own = quadratic(), torch.Generator().manual_seed(1)
    params = list(model.model.parameters())
    z = [torch.zeros_like(p) for p in params]
    perturb_(z, 8, 1.0)

    def noisy_loss():
        clean = model.per_example_loss(model.encode(examples(8)))
        return clean + torch.randn(8, dtype=clean.dtype) + torch.randn(8, generator=own, dtype=clean.dtype)

    torch.manual_seed(0)
    untouched = torch.randn(3)
    torch.manual_seed(0)
    d = central_difference(noisy_loss, params, 8, 1e-3, common_seed=3, generators=[own])
    torch.testing.assert_close(d.derivative, model.gradients() @ torch.cat(z), rtol=1e-6, atol=1e-6)
    assert torch.equal(torch.randn(3), untouched)  # the caller's global generator is left as it was


# -- clipping ----------------------------------------------------------------------------------
def test_every_per_example_scalar_is_clipped_to_plus_minus_c():
    model = quadratic(n=8)
    params = list(model.model.parameters())
    z = [torch.zeros_like(p) for p in params]
    perturb_(z, 5, 1.0)
    scalars = model.gradients() @ torch.cat(z)
    C = float(scalars.abs().sort().values[3:5].mean())  # half the examples exceed the bound, of both signs
    assert (scalars > C).any() and (scalars < -C).any()
    for i in range(8):  # alone: the release is the example's clipped scalar
        r = step(model, [[i]], [5], clip=C, lr=0.0)
        assert -C <= r.noisy_sums[0] <= C
        assert r.noisy_sums[0] == pytest.approx(float(scalars[i].clamp(-C, C)), rel=1e-6)
    r = step(model, [list(range(8))], [5], clip=C, lr=0.0)  # together: the sum of clipped scalars
    assert r.noisy_sums[0] == pytest.approx(float(scalars.clamp(-C, C).sum()), rel=1e-6)
    assert r.clipped == int((scalars.abs() > C).sum())


# -- noise -------------------------------------------------------------------------------------
def test_training_noise_has_std_sigma_times_c():
    """The loss ignores θ, so each release is pure noise, recovered from the update along the
    recorded z. With N = 2000 draws the sample std has relative standard error 1/√(2N)."""
    model = quadratic(n=4)
    model.per_example_loss = lambda batch, inner=model.per_example_loss: 0 * inner(batch)
    lr, C, n = 1.0, 0.3, 4
    s = spec(
        **{
            "training.steps": 2000,
            "training.batch_size": n,
            "training.physical_batch_size": n,
            "privacy.max_grad_norm": C,
        }
    )  # q = 1, one physical batch
    report = DPZO(lr=lr).train(model, examples(n), s, 1e-3)
    plus, minus = torch.stack(model.seen_theta[0::2]), torch.stack(model.seen_theta[1::2])  # θ ± μz per step
    theta = torch.cat([(plus + minus) / 2, model.theta().detach()[None]])
    z = (plus - minus) / 2e-3
    # θ' − θ = −lr · (noise / B) · z
    noise = (-((theta[1:] - theta[:-1]) * z).sum(-1) / (z * z).sum(-1) * n / lr).tolist()
    noise = torch.tensor(noise)
    expected = report.privacy.noise_multiplier * C
    assert float(noise.std()) == pytest.approx(expected, rel=4 / (2 * 2000) ** 0.5)
    assert abs(float(noise.mean())) < 4 * expected / 2000**0.5


def test_noise_comes_from_its_own_generator_not_the_perturbation_seed_or_global_state():
    model = quadratic()

    def releases(noise_seed, global_seed):
        torch.manual_seed(global_seed)
        r = step(model, [[0, 1]], [99], noise_std=1.0, noise=RandomStream(noise_seed), lr=0.0)
        return r.noisy_sums[0]

    clean = step(model, [[0, 1]], [99], lr=0.0).noisy_sums[0]
    same_perturbation = releases(1, 0), releases(2, 0)  # same seed 99, different noise seeds
    assert same_perturbation[0] != same_perturbation[1]
    assert releases(1, 0) == releases(1, 12345)  # the global generator plays no part
    # the public code's bug: noise drawn from the generator re-seeded with the perturbation seed
    leaked = float(torch.randn(1, generator=torch.Generator().manual_seed(99), dtype=torch.float64)[0])
    assert releases(1, 0) - clean != pytest.approx(leaked)
    sampling, perturbation, noise = streams(0, secure=False)
    assert noise.normal(4).tolist() != RandomStream(None).normal(4).tolist()  # secure: fresh entropy
    assert noise.normal(3).tolist() != torch.randn(3, generator=perturbation, dtype=torch.float64).tolist()


def test_training_draws_noise_from_the_noise_stream_alone(monkeypatch, fast_calibration):
    """Same sampling and perturbation streams, different noise streams: different models. The
    global generator, re-seeded as the public code did, changes nothing."""

    def final(noise_seed, global_seed):
        monkeypatch.setattr(
            "dpbench.methods.dpzo.streams",
            lambda seed, secure: (RandomStream(1), torch.Generator().manual_seed(2), RandomStream(noise_seed)),
        )
        torch.manual_seed(global_seed)
        model = quadratic(n=20)
        DPZO().train(model, examples(20), spec(), 1e-3)
        return model.theta().detach()

    assert torch.equal(final(3, 0), final(3, 1))
    assert not torch.equal(final(3, 0), final(4, 0))


def test_secure_noise_is_standard_normal():
    draws = RandomStream(None).normal(2000)
    assert float(draws.std()) == pytest.approx(1.0, rel=4 / (2 * 2000) ** 0.5)
    assert abs(float(draws.mean())) < 4 / 2000**0.5
    u = RandomStream(None).uniform(4000)
    assert (
        0 <= float(u.min()) and float(u.max()) < 1 and float(u.mean()) == pytest.approx(0.5, abs=4 * 0.29 / 4000**0.5)
    )


# -- sampling and accounting -------------------------------------------------------------------
def test_poisson_sample_has_rate_q():
    stream = RandomStream(3)
    sizes = torch.tensor([len(poisson_sample(stream, 200, 0.1)) for _ in range(500)], dtype=torch.float64)
    # binomial(200, 0.1): mean 20, variance 18
    assert float(sizes.mean()) == pytest.approx(20, abs=4 * (18 / 500) ** 0.5)
    assert float(sizes.var()) == pytest.approx(18, rel=4 * (2 / 499) ** 0.5)


def test_k_directions_are_k_releases_each_on_its_own_poisson_sample(fast_calibration):
    n, steps, k = 20, 4, 3
    model = quadratic(n=n)
    s = spec(**{"training.steps": steps, "training.batch_size": 10, "training.physical_batch_size": 32})
    report = DPZO(directions=k).train(model, examples(n), s, 1e-3)
    p = report.privacy
    assert fast_calibration == [
        dict(target_epsilon=8.0, delta=1e-3, sample_rate=0.5, steps=steps * k, accountant="prv")
    ]
    assert p.releases_per_step == k and p.steps == steps and p.sample_rate == 0.5 and p.noise_multiplier == 1.5
    assert p.epsilon == spent_epsilon(
        noise_multiplier=1.5, delta=1e-3, sample_rate=0.5, steps=steps * k, accountant="prv"
    )
    assert report.epochs == pytest.approx(steps * k * 0.5)
    batches = model.seen_idx[::2]  # the + pass of each release (one physical batch each)
    assert len(batches) == steps * k and batches == model.seen_idx[1::2]
    # a shared sample would release a √k·C-sensitive vector per sample: not what is accounted
    assert all(len({tuple(b) for b in batches[j * k : (j + 1) * k]}) == k for j in range(steps))
    assert report.samples == sum(map(len, batches)) and len(report.losses) == steps


def test_calibrated_noise_for_k_directions_spends_the_target():
    s = spec(**{"training.steps": 5, "training.batch_size": 10, "training.physical_batch_size": 32})
    p = DPZO(directions=2).train(quadratic(n=20), examples(20), s, 1e-3).privacy
    assert p.epsilon <= 8.0 and p.epsilon == pytest.approx(8.0, rel=0.02)
    alone = spent_epsilon(noise_multiplier=p.noise_multiplier, delta=1e-3, sample_rate=0.5, steps=5, accountant="prv")
    assert alone < 0.9 * p.epsilon  # σ was calibrated for 2·5 releases, not for 5


# -- options and end to end --------------------------------------------------------------------
def test_options_are_validated_and_the_schedule_decays():
    assert METHODS.get("dpzo") is DPZO
    for bad in ({"directions": 0}, {"mu": -1.0}, {"lr": 0}, {"lr_schedule": "cosine"}):
        with pytest.raises(DpbenchError):
            DPZO(**bad)
    assert learning_rate(0.1, "constant", 5, 10) == 0.1
    assert learning_rate(0.1, "linear", 0, 10) == 0.1 and learning_rate(0.1, "linear", 5, 10) == pytest.approx(0.05)


def test_same_seed_reproduces_the_run_and_secure_rng_does_not(fast_calibration):
    def final(**opts):
        model = quadratic(n=20)
        DPZO(**opts).train(model, examples(20), spec(), 1e-3)
        return model.theta().detach()

    assert torch.equal(final(), final())
    assert not torch.equal(final(secure_rng=True), final(secure_rng=True))


def test_random_token_pruning_on_the_tiny_llava_gives_consistent_differences(tiny_model, digit_examples):
    """Random visual-token pruning draws from a generator of its own. Shared by the ± passes,
    the difference quotient is a derivative: the same at μ and 2μ. Unshared, each pass keeps
    other tokens and the quotient is a loss gap over 2μ, far from the derivative."""
    pruner = install_token_pruning(tiny_model, TokenPruning("random", 0.25))
    try:
        tiny_model.set_trainable(["projector", "language_model"])
        params = [p for p in tiny_model.model.parameters() if p.requires_grad]
        batch = tiny_model.encode(digit_examples[:4], [e.target for e in digit_examples[:4]])
        gen = tiny_model.token_pruner.generator
        start = gen.get_state()

        def quotient(mu, shared):
            gen.set_state(start)  # the same token draw for every call
            return central_difference(
                lambda: tiny_model.per_example_loss(batch),
                params,
                11,
                mu,
                common_seed=0,
                generators=[gen] if shared else [],
            ).derivative

        torch.testing.assert_close(quotient(1e-4, True), quotient(2e-4, True), rtol=0.05, atol=0.5)
        assert (quotient(1e-4, False) - quotient(2e-4, False)).abs().max() > 10
    finally:
        pruner.remove()


def test_trains_the_tiny_llava_without_autograd(tiny_model, digit_examples, fast_calibration):
    tiny_model.set_trainable(["projector", "language_model"])
    params = [p for p in tiny_model.model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    report = DPZO(directions=2, lr=1e-3).train(tiny_model, digit_examples, spec(**{"training.steps": 2}), 1e-3)
    assert report.tokens > 0 and report.samples > 0 and all(x > 0 for x in report.losses)
    assert report.details["directions"] == 2 and report.details["lr"] == 1e-3
    assert all(p.grad is None for p in params)
    assert any(not torch.equal(p.detach(), b) for p, b in zip(params, before))
    assert not tiny_model.model.training
    with torch.no_grad():
        for p, b in zip(params, before):
            p.copy_(b)

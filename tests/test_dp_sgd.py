"""DP-SGD through Opacus on the real (tiny, random) LLaVA: per-example gradients, clipping,
noise scale. Each test would fail if the DP wiring were wrong."""

import pytest
import torch
from opacus import GradSampleModule
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer

from dpbench.methods import grad_samplers
from dpbench.methods.dpsgd import train_dp_sgd
from dpbench.spec import RunSpec


def trainable_lm_params(model):
    model.set_trainable(["projector", "language_model"])
    return [p for p in model.model.parameters() if p.requires_grad]


@pytest.mark.parametrize("norm", grad_samplers.RMS_NORMS)
def test_rms_norm_samplers_are_registered_and_match_autograd(norm):
    """Llama's RMSNorm (tiny-llava, Idefics3/SmolVLM) and Qwen2-VL's: per-sample and ghost rules."""
    assert GradSampleModule.GRAD_SAMPLERS[norm] is grad_samplers.llama_rms_norm_grad_sample
    assert GradSampleModuleFastGradientClipping.NORM_SAMPLERS[norm] is grad_samplers.llama_rms_norm_norm_sample
    torch.manual_seed(0)
    layer = norm(8)
    layer.weight.data.normal_()
    x = torch.randn(4, 5, 8)
    reference = []
    for i in range(4):
        layer.weight.grad = None
        (layer(x[i : i + 1]) ** 2).sum().backward()
        reference.append(layer.weight.grad.clone())
    gsm = GradSampleModule(torch.nn.Sequential(layer), loss_reduction="sum")
    (gsm(x.requires_grad_()) ** 2).sum().backward()
    for i in range(4):
        torch.testing.assert_close(layer.weight.grad_sample[i], reference[i], rtol=1e-5, atol=1e-6)
    gsm._close()


def test_per_example_gradients_of_the_llava_match_one_by_one_autograd(
    tiny_model, digit_examples, assert_per_example_gradients_match
):
    assert_per_example_gradients_match(tiny_model, digit_examples[:4], trainable_lm_params(tiny_model))


def test_every_per_example_gradient_is_clipped_to_the_bound(tiny_model, digit_examples, autograd_grads):
    examples = digit_examples[:6]
    params = trainable_lm_params(tiny_model)
    reference = autograd_grads(tiny_model, examples, params)
    norms = torch.stack([torch.sqrt(sum((g**2).sum() for g in grads)) for grads in reference])
    C = float(norms.median())  # half the examples are above the bound, half below
    gsm = GradSampleModule(tiny_model.model).train()
    opt = DPOptimizer(
        torch.optim.SGD(params, lr=0.0), noise_multiplier=0.0, max_grad_norm=C, expected_batch_size=len(examples)
    )
    batch = tiny_model.encode(examples, [e.target for e in examples])
    tiny_model.per_example_loss(batch, model=gsm).mean().backward()
    opt.pre_step()
    factors = (C / norms).clamp(max=1.0)
    assert (norms * factors <= C * (1 + 1e-5)).all()
    for j, p in enumerate(params):
        expected = sum(f * grads[j] for f, grads in zip(factors, reference)) / len(examples)
        torch.testing.assert_close(p.grad, expected, rtol=1e-3, atol=1e-7)
    gsm._close()
    tiny_model.model.eval()


def test_noise_added_by_training_has_std_sigma_times_c(tiny_model, digit_examples):
    """With a minute clipping bound the DP gradient is noise alone: std must be σ·C / B."""
    C, B = 1e-4, 4
    spec = RunSpec().replace(
        **{
            "training.steps": 2,
            "training.batch_size": B,
            "training.physical_batch_size": 4,
            "training.lr": 1e-9,
            "privacy.max_grad_norm": C,
            "privacy.epsilon": 4.0,
        }
    )
    seen = []
    tiny_model.set_trainable(["projector", "language_model"])
    report = train_dp_sgd(
        tiny_model,
        digit_examples,
        spec,
        1e-3,
        label="test",
        post_noise_hook=lambda ps, audit: seen.append(torch.cat([p.grad.flatten() for p in ps])),
    )
    assert len(seen) == 2 and report.privacy.epsilon <= 4.0
    sigma = report.privacy.noise_multiplier
    for g in seen:
        d = g.numel()
        # the clipped sum adds at most B*C/B = C in norm: negligible against sqrt(d) σ C / B
        std = float(g.std() * B / C)
        assert std == pytest.approx(sigma, rel=5 / d**0.5 + 1e-3)
        assert abs(float(g.mean())) < 5 * sigma * C / B / d**0.5


def test_the_recorded_sample_rate_is_the_one_opacus_sampled_and_accounted_at(
    tiny_model, digit_examples, dp_accounting_epsilon, dp_accounting_pld_epsilon
):
    """B = 5 does not divide n = 12: Opacus' Poisson loader samples at 1/⌈12/5⌉ = 1/3, not 5/12,
    and accounts at 1/3; the result must record 1/3, or ε cannot be checked from the record."""
    spec = RunSpec().replace(
        **{
            "training.steps": 2,
            "training.batch_size": 5,
            "training.physical_batch_size": 5,
            "training.lr": 1e-9,
            "privacy.epsilon": 4.0,
        }
    )
    tiny_model.set_trainable(["projector", "language_model"])
    p = train_dp_sgd(tiny_model, digit_examples, spec, 1e-3, label="test").privacy
    assert len(digit_examples) == 12 and p.sample_rate == pytest.approx(1 / 3)
    assert p.accountant == "prv"  # the default: tight, checked against dp-accounting's PLD; RDP's beside it
    assert p.epsilon == pytest.approx(
        dp_accounting_pld_epsilon(p.noise_multiplier, p.sample_rate, p.steps, 1e-3), rel=0.01
    )
    assert p.epsilon_rdp == pytest.approx(
        dp_accounting_epsilon(p.noise_multiplier, p.sample_rate, p.steps, 1e-3), rel=0.01
    )
    assert p.epsilon <= 4.0
    assert p.epsilon == pytest.approx(4.0, rel=0.02)  # σ calibrated at the rate sampled: the target is met

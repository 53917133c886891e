"""Ghost clipping gives the DP gradient per-sample clipping gives, through our training loop.

With the noise off and sample rate 1 (every example in the one logical batch, split into
physical batches), both modes must hand the post-noise hook the same clipped, averaged
gradient. The bound is the median per-example norm, so half the examples are clipped."""

import copy

import pytest
import torch

from dpbench.errors import DpbenchError
from dpbench.methods import dpsgd as opacus_training
from dpbench.methods.base import METHODS
from dpbench.methods.dpsgd import train_dp_sgd
from dpbench.models.token_pruning import TokenPruning, install_token_pruning
from dpbench.spec import RunSpec


def per_example_norms(model, examples) -> torch.Tensor:
    params = [p for p in model.model.parameters() if p.requires_grad]
    norms = []
    for e in examples:
        model.model.zero_grad(set_to_none=True)
        model.per_example_loss(model.encode([e], [e.target])).sum().backward()
        norms.append(torch.sqrt(sum((p.grad**2).sum() for p in params)))
    model.model.zero_grad(set_to_none=True)
    return torch.stack(norms)


def dp_gradient(model, examples, spec, clipping):
    """The gradient the optimiser would consume after one noiseless step; the model is restored."""
    state = copy.deepcopy(model.model.state_dict())
    seen = []
    try:
        report = train_dp_sgd(
            model,
            examples,
            spec,
            1e-3,
            label="test",
            clipping=clipping,
            post_noise_hook=lambda ps, audit: seen.append([p.grad.detach().clone() for p in ps]),
        )
    finally:
        model.model.load_state_dict(state)
        model.model.eval()
    assert report.details["clipping"] == clipping and report.steps == 1
    (grads,) = seen
    return grads


@pytest.mark.parametrize("pruning", [None, "merge"])
def test_ghost_and_per_sample_clipping_give_the_same_gradient(tiny_model, digit_examples, monkeypatch, pruning):
    monkeypatch.setattr(opacus_training, "calibrate_noise", lambda **_: 0.0)  # noise off
    examples = digit_examples[:8]
    tiny_model.set_trainable(["projector", "language_model"])
    pruner = install_token_pruning(tiny_model, TokenPruning(pruning)) if pruning else None
    try:
        norms = per_example_norms(tiny_model, examples)
        C = float(norms.median())
        assert (norms > C * 1.01).any() and (norms < C * 0.99).any()
        spec = RunSpec().replace(
            **{
                "training.steps": 1,
                "training.batch_size": len(examples),  # sample rate 1
                "training.physical_batch_size": 3,
                "training.lr": 1e-9,
                "privacy.max_grad_norm": C,
            }
        )
        ghost = dp_gradient(tiny_model, examples, spec, "ghost")
        per_sample = dp_gradient(tiny_model, examples, spec, "per-sample")
    finally:
        if pruner is not None:
            pruner.remove()
    assert len(ghost) == len(per_sample) > 0
    total = torch.sqrt(sum((g**2).sum() for g in per_sample))
    assert total > 0
    for g, p in zip(ghost, per_sample):
        torch.testing.assert_close(g, p, rtol=1e-4, atol=1e-6 * float(total))
    # each of the B examples adds at most C in norm, and the sum is divided by B
    assert total <= C * (1 + 1e-4)


@pytest.mark.parametrize("clipping", ["ghost", "per-sample"])
def test_empty_poisson_draws_still_step(tiny_model, digit_examples, monkeypatch, clipping):
    """Expected batch 1 of 12: about a third of the draws are empty, and each still releases noise."""
    spec = RunSpec().replace(
        **{
            "training.steps": 6,
            "training.batch_size": 1,
            "training.physical_batch_size": 1,
            "training.lr": 1e-9,
            "privacy.epsilon": 8.0,
        }
    )
    tiny_model.set_trainable(["projector", "language_model"])
    state = copy.deepcopy(tiny_model.model.state_dict())
    encoded, per_step = [], []  # examples encoded since the last step, per step
    encode = tiny_model.encode
    monkeypatch.setattr(tiny_model, "encode", lambda ex, *a: encoded.append(len(ex)) or encode(ex, *a))

    def hook(params, audit):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        per_step.append(sum(encoded))
        encoded.clear()

    try:
        report = train_dp_sgd(
            tiny_model, digit_examples, spec, 1e-3, label="test", clipping=clipping, post_noise_hook=hook
        )
    finally:
        tiny_model.model.load_state_dict(state)
        tiny_model.model.eval()
    assert report.steps == 6 and len(per_step) == 6
    assert 0 in per_step and any(per_step)  # the seed gives both kinds of draw


def test_clipping_option_defaults_and_validation():
    assert METHODS.get("dpsgd")().opts["clipping"] == "per-sample"
    assert METHODS.get("dualpriv")().opts["clipping"] == "per-sample"
    assert METHODS.get("dpsgd")(clipping="ghost").opts["clipping"] == "ghost"
    for name in ("dpsgd", "dualpriv"):
        with pytest.raises(DpbenchError, match="clipping must be one of per-sample, ghost"):
            METHODS.get(name)(clipping="flat")

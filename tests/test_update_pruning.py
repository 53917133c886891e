"""Update pruning: exactly the requested share of the noisy gradient survives, pruned
coordinates stay put under Adam, and ε does not move (it is post-processing)."""

import copy

import pytest
import torch

from dpbench.errors import DpbenchError
from dpbench.methods.base import METHODS
from dpbench.methods.update_pruning import UpdatePruner, kept_count
from dpbench.spec import RunSpec


def noisy_params(seed=0):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in ((7, 5), (13,), (3, 4, 2), (1,))]
    for p in params:
        p.grad = torch.randn_like(p)
    return params


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.5, 1.0])
def test_per_tensor_scope_keeps_exactly_the_largest_fraction_of_each_tensor(keep):
    params = noisy_params()
    before = [p.grad.clone() for p in params]
    pruner = UpdatePruner(keep, "tensor")
    pruner(params)
    for p, g in zip(params, before):
        kept = p.grad != 0
        assert int(kept.sum()) == kept_count(g.numel(), keep)
        assert torch.equal(p.grad[kept], g[kept])  # survivors are untouched
        if not kept.all():
            assert g[kept].abs().min() >= g[~kept].abs().max()
    total = sum(p.numel() for p in params)
    assert pruner.details()["gradient_density"] == sum(int((p.grad != 0).sum()) for p in params) / total


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.5, 1.0])
def test_global_scope_keeps_exactly_the_largest_fraction_of_all_coordinates(keep):
    params = noisy_params()
    params[0].grad *= 10  # global top-k favours the large tensor; per tensor would not
    before = torch.cat([p.grad.flatten() for p in params])
    UpdatePruner(keep, "global")(params)
    after = torch.cat([p.grad.flatten() for p in params])
    kept = after != 0
    assert int(kept.sum()) == kept_count(before.numel(), keep)
    if not kept.all():
        assert before[kept].abs().min() >= before[~kept].abs().max()


def adam_steps(adam_mode, keep=0.3):
    """One plain Adam step (moments become non-zero), then one with update pruning."""
    params = noisy_params()
    opt = torch.optim.Adam(params, lr=0.1)
    opt.step()
    for p in params:
        p.grad = torch.randn_like(p)
    before = copy.deepcopy([(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in params])
    with UpdatePruner(keep, "tensor", adam_mode) as pruner:
        pruner(params)
        masks = [p.grad != 0 for p in params]
        opt.step()
    return params, opt, before, masks, pruner


def test_freeze_leaves_pruned_coordinates_and_their_adam_moments_untouched():
    params, opt, before, masks, pruner = adam_steps("freeze")
    for p, (value, state), kept in zip(params, before, masks):
        assert torch.equal(p.detach()[~kept], value[~kept])
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][name][~kept], state[name][~kept])
            assert not torch.equal(opt.state[p][name][kept], state[name][kept])
        assert (p.detach()[kept] != value[kept]).all()  # the kept ones do move
    total = sum(p.numel() for p in params)
    assert pruner.details()["update_density"] == pytest.approx(sum(int(m.sum()) for m in masks) / total)


def test_freeze_on_the_first_step_keeps_moments_at_their_initial_zeros():
    params = noisy_params()
    values = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=0.1)
    with UpdatePruner(0.3, "global") as pruner:
        pruner(params)
        masks = [p.grad != 0 for p in params]
        opt.step()
    for p, value, kept in zip(params, values, masks):
        assert torch.equal(p.detach()[~kept], value[~kept])
        assert (opt.state[p]["exp_avg"][~kept] == 0).all() and (opt.state[p]["exp_avg_sq"][~kept] == 0).all()


def test_decay_is_plain_adam_so_pruned_coordinates_drift_on_momentum():
    params, opt, before, masks, pruner = adam_steps("decay")
    for p, (value, _), kept in zip(params, before, masks):
        assert (p.detach()[~kept] != value[~kept]).all()  # why "freeze" is the default
    assert pruner.details()["update_density"] == 1.0


def test_bad_options_fail():
    for args in ((0.0, "tensor"), (0.3, "layer"), (0.3, "tensor", "sgd")):
        with pytest.raises(DpbenchError):
            UpdatePruner(*args)


def test_update_pruning_leaves_the_accounted_epsilon_unchanged(tiny_model, digit_examples):
    spec = RunSpec().replace(
        **{
            "training.steps": 2,
            "training.batch_size": 4,
            "training.physical_batch_size": 4,
            "training.lr": 1e-9,
            "privacy.epsilon": 4.0,
        }
    )
    tiny_model.set_trainable(["projector", "language_model"])
    state = copy.deepcopy(tiny_model.model.state_dict())
    reports = {}
    try:
        for name in ("dpsgd", "dualpriv-update"):
            method = METHODS.get(name)()
            method.prepare(tiny_model)
            reports[name] = method.train(tiny_model, digit_examples, spec, 1e-3)
    finally:
        tiny_model.model.load_state_dict(state)
        tiny_model.model.eval()
    plain, pruned = reports["dpsgd"].privacy, reports["dualpriv-update"].privacy
    assert pruned.epsilon == plain.epsilon and pruned.noise_multiplier == plain.noise_multiplier
    assert pruned.steps == plain.steps == 2
    details = reports["dualpriv-update"].details["update_pruning"]
    assert details["steps"] == 2 and 0.59 < details["gradient_density"] < 0.61  # the default keep, 0.6
    assert details["update_density"] <= details["gradient_density"]

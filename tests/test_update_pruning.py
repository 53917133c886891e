"""Update pruning: exactly the requested share of the noisy gradient survives, pruned
coordinates stay put under Adam, and ε does not move (it is post-processing)."""

import copy

import pytest
import torch

from dpbench.errors import DpbenchError
from dpbench.methods.base import METHODS
from dpbench.methods.dualpriv import DualPriv
from dpbench.methods.update_pruning import UpdatePruner, kept_count, same_shape_state
from dpbench.models.loading import load_model
from dpbench.models.token_pruning import install_token_pruning
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
    pruner = UpdatePruner(keep, "tensor", adam_mode)
    pruner(params)
    masks = [p.grad != 0 for p in params]
    pruner.step(opt)
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
    pruner = UpdatePruner(0.3, "global")
    pruner(params)
    masks = [p.grad != 0 for p in params]
    pruner.step(opt)
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


# -- the exact freeze, one parameter at a time, against the whole-model copies it replaced -------
class WholeCopyFreeze(UpdatePruner):
    """The freeze as it was: every pruned parameter and its moments copied before one step over
    all of them, the pruned coordinates put back after."""

    def step(self, optimizer):
        self.optimizer = optimizer
        params = [p for group in optimizer.param_groups for p in group["params"] if p in self.masks]
        saved = {
            p: (p.detach().clone(), {n: s.clone() for n, s in same_shape_state(p, optimizer.state.get(p, {})).items()})
            for p in params
        }
        self.peak_held_bytes = sum(v.nbytes + sum(m.nbytes for m in ms.values()) for v, ms in saved.values())
        optimizer.step()
        with torch.no_grad():
            for p in params:
                (values, moments), mask, state = saved[p], self.masks[p], optimizer.state[p]
                p.copy_(torch.where(mask, p, values))
                for name, s in same_shape_state(p, state).items():
                    s.copy_(torch.where(mask, s, moments[name] if name in moments else 0))
                self._count(p, state, mask)
        self.masks = {}


class Recorded(UpdatePruner):
    def step(self, optimizer):
        self.optimizer = optimizer
        super().step(optimizer)


def assert_same_training(params_a, opt_a, params_b, opt_b):
    for a, b in zip(params_a, params_b, strict=True):
        torch.testing.assert_close(a.detach(), b.detach())
        state_a, state_b = opt_a.state[a], opt_b.state[b]
        assert state_a.keys() == state_b.keys()
        for name in state_a:
            torch.testing.assert_close(state_a[name], state_b[name])


def steps_on_fresh_gradients(pruner, steps=3, audit=True):
    """Adam over a few tensors and, like an audit block, one more in a group of its own."""
    params, block = noisy_params(), [torch.nn.Parameter(torch.zeros(9))]
    opt = torch.optim.Adam([{"params": params}, *({"params": [a]} for a in block if audit)], lr=0.1)
    torch.manual_seed(1)
    for _ in range(steps):
        for p in params + block:
            p.grad = torch.randn_like(p)
        pruner(params, block if audit else [])
        pruner.step(opt)
    return params + (block if audit else []), opt


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_freeze_one_tensor_at_a_time_updates_as_the_whole_model_copy_did(scope):
    new, old = UpdatePruner(0.3, scope), WholeCopyFreeze(0.3, scope)
    params_new, opt_new = steps_on_fresh_gradients(new)
    params_old, opt_old = steps_on_fresh_gradients(old)
    assert_same_training(params_new, opt_new, params_old, opt_old)
    assert new.details() == old.details() and new.masks == {}


def test_freeze_holds_copies_of_one_tensor_and_its_moments_not_of_the_model():
    new, old = UpdatePruner(0.3), WholeCopyFreeze(0.3)
    params, opt = steps_on_fresh_gradients(new, steps=2, audit=False)
    steps_on_fresh_gradients(old, steps=2, audit=False)
    one_tensor = max(p.nbytes + sum(s.nbytes for s in same_shape_state(p, opt.state[p]).values()) for p in params)
    assert 0 < new.peak_held_bytes <= one_tensor
    assert old.peak_held_bytes > one_tensor  # the bound would have caught the whole-model copies


def test_freeze_matches_the_whole_model_copy_on_the_embedded_model_over_dualpriv_steps(
    digit_examples, isolated_cache, monkeypatch
):
    spec = RunSpec(method="dualpriv").replace(
        **{
            "training.steps": 2,  # the first creates the moments, the second restores saved ones
            "training.batch_size": 4,
            "training.physical_batch_size": 4,
            "training.lr": 1e-3,
            "privacy.accountant": "rdp",  # calibrates in milliseconds: the updates are what is compared
        }
    )
    runs = []
    for pruner in (Recorded(0.6), WholeCopyFreeze(0.6)):
        model = load_model("tiny-llava", "cpu")
        model.set_trainable(["projector", "language_model"])
        install_token_pruning(model, spec.token_pruning)  # its own seeded generator: the same tokens each run
        monkeypatch.setattr(DualPriv, "update_pruner", lambda self, p=pruner: p)
        method = DualPriv()
        method.prepare(model)
        report = method.train(model, digit_examples, spec, 1e-3)
        runs.append((list(model.model.parameters()), pruner.optimizer, report.details["update_pruning"]))
    (params_new, opt_new, new), (params_old, opt_old, old) = runs
    stepped = [[p for group in opt.param_groups for p in group["params"]] for opt in (opt_new, opt_old)]
    assert len(opt_new.param_groups) > 1  # the audit block's groups, after the model's
    assert_same_training(stepped[0], opt_new, stepped[1], opt_old)
    torch.testing.assert_close([p.detach() for p in params_new], [p.detach() for p in params_old])
    assert new == old and new["steps"] == 2 and 0 < new["update_density"] <= new["gradient_density"]

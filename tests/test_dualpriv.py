"""dualpriv = DP-SGD + visual-token pruning + update pruning, and its two ablations."""

import copy

import pytest
import torch
from opacus.accountants import create_accountant

from dpbench.errors import DpbenchError
from dpbench.methods.base import METHODS
from dpbench.methods.dualpriv import DualPriv
from dpbench.models.token_pruning import Images, TokenPruning, install_token_pruning, merge
from dpbench.spec import RunSpec


def test_defaults_and_ablations_share_one_implementation():
    full, token, update = (METHODS.get(n)() for n in ("dualpriv", "dualpriv-token", "dualpriv-update"))
    assert all(isinstance(m, DualPriv) for m in (full, token, update))
    pruning = {n: RunSpec(method=n).token_pruning for n in ("dualpriv", "dualpriv-token", "dualpriv-update")}
    assert (pruning["dualpriv"].strategy, pruning["dualpriv"].keep_ratio) == ("random", 0.5)
    assert full.opts["update_keep"] == 0.6
    assert pruning["dualpriv-token"].strategy == "random" and token.update_pruner() is None
    assert not pruning["dualpriv-update"].enabled and update.update_pruner().keep == 0.6
    assert [METHODS.get(n).name for n in ("dualpriv", "dualpriv-token", "dualpriv-update")] == [
        "dualpriv",
        "dualpriv-token",
        "dualpriv-update",
    ]
    custom = RunSpec.from_dict(
        {"method": "dualpriv", "token_pruning": "text-guided", "method_options": {"update_scope": "global"}}
    )
    assert custom.token_pruning.strategy == "text-guided"
    assert METHODS.get("dualpriv")(**custom.method_options).update_pruner().scope == "global"


@pytest.mark.parametrize(
    "options",
    [
        {"update_keep": 0},
        {"update_scope": "layer"},
        {"update_adam": "sgd"},
        # option values arrive untyped: text and booleans are refused, not converted
        {"update_keep": "0.5"},
        {"update_keep": True},
        # token pruning is the spec's, not a method option
        {"token_pruning": "merge"},
        {"keep_ratio": 0.5},
    ],
)
def test_bad_options_fail_when_the_method_is_made(options):
    with pytest.raises(DpbenchError):
        METHODS.get("dualpriv")(**options)


@pytest.mark.parametrize(
    "pruning",
    [
        {"strategy": "zip"},
        {"keep_ratio": 0},
        # values arrive untyped: text and booleans are refused, not converted
        {"keep_ratio": "abc"},
        {"keep_ratio": True},
        {"keep_count": True},
    ],
)
def test_bad_token_pruning_fails_when_the_spec_is_made(pruning):
    with pytest.raises(DpbenchError):
        RunSpec.from_dict({"method": "dualpriv", "token_pruning": pruning})


def test_dualpriv_trains_and_records_its_pruning(tiny_model, digit_examples):
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
    pruner = install_token_pruning(tiny_model, TokenPruning("merge", 0.25))  # merge records its split
    method = METHODS.get("dualpriv")(fused_noise=True)
    method.prepare(tiny_model)
    try:
        assert tiny_model.visual_tokens_kept == 16  # of 64
        report = method.train(tiny_model, digit_examples, spec, 1e-3)
    finally:
        pruner.remove()
        tiny_model.model.load_state_dict(state)
        tiny_model.model.eval()
    tokens, update = pruner.details(), report.details["update_pruning"]  # the run phases record the former
    assert tokens["strategy"] == "merge" and tokens["keep_ratio"] == 0.25
    assert (tokens["visual_tokens_before"], tokens["visual_tokens_after"]) == (64, 16)
    assert (tokens["dominant"], tokens["contextual"]) == (14, 2)
    sigma = report.privacy.noise_multiplier  # calibrated apart by dualpriv (for the fused noise) and by DP-SGD
    assert tokens["fused_noise_std"] == sigma * 1.0 / 4
    assert update["keep"] == 0.6 and update["scope"] == "tensor" and update["adam"] == "freeze"
    assert 0.59 < update["gradient_density"] < 0.61 and 0 < update["update_density"] <= update["gradient_density"]
    # the privacy accounting is DP-SGD's own: ε is what σ spends over the steps, nothing else
    accountant = create_accountant(report.privacy.accountant)
    accountant.history = [(sigma, report.privacy.sample_rate, 2)]  # the rate Opacus sampled at
    assert report.privacy.epsilon == pytest.approx(accountant.get_epsilon(1e-3)) and report.privacy.epsilon <= 4.0


class Projected(Images):
    def __init__(self, tokens, scores, noise_std):
        self.tokens, self.scores, self.noise_std = tokens, scores, noise_std
        self.generator = torch.Generator().manual_seed(0)

    def cls_attention(self):
        return self.scores


def test_fused_noise_touches_only_the_contextual_tokens():
    torch.manual_seed(0)
    tokens, scores = torch.randn(1, 64, 8), torch.rand(1, 64)
    clean, noisy = merge(Projected(tokens, scores, 0.0), 16), merge(Projected(tokens, scores, 0.5), 16)
    changed = (clean != noisy).any(-1)[0]
    assert int(changed.sum()) == 2  # the 2 contextual tokens; the 14 dominant ones are exact

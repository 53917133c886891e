"""DP-LoRA: parsing, which parameters train, Opacus' per-sample gradients of the adapters
(hooks and ghost), one DP-SGD and one DP-ZO step, merging, the spec's hash, and `dpbench run
--lora` end to end. Each test would fail if that part were wrong. Every test adapts a deep
copy of the session's tiny model: `tiny_model` is shared."""

import copy
import json

import pytest
import torch
from peft.tuners.lora import LoraLayer
from safetensors import safe_open

from dpbench.errors import DpbenchError
from dpbench.methods import dpsgd as opacus_training
from dpbench.methods import dpzo
from dpbench.methods.base import METHODS
from dpbench.models import tiny_llava
from dpbench.models.base import VisionLanguageModel
from dpbench.models.loading import load_hf
from dpbench.models.lora import LoraSpec, inject_lora, is_adapter_parameter, merge_lora, setup_parameters
from dpbench.schemas import validation_errors
from dpbench.spec import RunSpec, load_spec_file

LORA = LoraSpec(r=2, alpha=4, targets=("q_proj", "v_proj"))
N_LM_LAYERS = tiny_llava.ARCH["text"]["num_hidden_layers"]


def spec(**changes) -> RunSpec:
    base = {
        "lora": LORA.to_dict(),
        "training.steps": 1,
        "training.batch_size": 4,
        "training.physical_batch_size": 4,
        "privacy.epsilon": 8.0,
    }
    return RunSpec().replace(**{**base, **changes})


def adapted(tiny_model, run_spec: RunSpec | None = None) -> VisionLanguageModel:
    model = VisionLanguageModel(copy.deepcopy(tiny_model.model), tiny_model.processor, tiny_model.info)
    setup_parameters(model, run_spec or spec())
    return model


def randomise_b(model, std=0.05, seed=0):
    """peft starts B at zero, where A's gradient is zero too: give both something to show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.model.named_parameters()}


@torch.no_grad()
def logits(model, examples) -> torch.Tensor:
    model.model.eval()
    batch = model.encode(examples, [e.target for e in examples])
    return model.model(**{k: v for k, v in batch.items() if k != "labels"}).logits


# -- parsing -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("r=8,alpha=16,targets=q_proj,v_proj", LoraSpec(8, 16.0, 0.0, ("q_proj", "v_proj"))),
        (" r = 4 , alpha=8.5, dropout=0.1 ", LoraSpec(4, 8.5, 0.1, ("q_proj", "v_proj"))),
        ("targets=q_proj,k_proj,o_proj,r=2,alpha=4", LoraSpec(2, 4.0, 0.0, ("q_proj", "k_proj", "o_proj"))),
        (
            "r=1,alpha=1,targets=self_attn.q_proj,mlp.up_proj",
            LoraSpec(1, 1.0, 0.0, ("self_attn.q_proj", "mlp.up_proj")),
        ),
    ],
)
def test_good_strings_parse(text, expected):
    parsed = LoraSpec.parse(text)
    assert parsed == expected and isinstance(parsed.alpha, float) and isinstance(parsed.targets, tuple)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("r=8,alpha=16,rank=3", "unknown key 'rank'"),
        ("r=0,alpha=16", "r must be an integer >= 1"),
        ("r=8.5,alpha=16", "r must be an integer"),
        ("r=eight,alpha=16", "r must be an integer"),
        ("r=8,alpha=0", "alpha must be a positive"),
        ("r=8,alpha=-2", "alpha must be a positive"),
        ("r=8,alpha=nan", "alpha must be a positive"),
        ("r=8,alpha=16,dropout=1", "dropout must lie in [0, 1)"),
        ("r=8,alpha=16,dropout=-0.1", "dropout must lie in [0, 1)"),
        ("r=8,alpha=16,targets=", "targets must name at least one"),
        ("r=8,alpha=16,targets=q_proj;v_proj", "is not a module name"),
        ("r=8,q_proj,alpha=16", "only targets takes a list"),
        ("q_proj,r=8,alpha=16", "KEY=VALUE"),
        ("alpha=16,targets=q_proj", "needs r and alpha"),
        ("r=8,r=4,alpha=16", "r given twice"),
    ],
)
def test_bad_strings_are_one_line_errors(text, fragment):
    with pytest.raises(DpbenchError) as info:
        LoraSpec.parse(text)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_config_mappings_and_spec_validation(tmp_path):
    (tmp_path / "run.yaml").write_text("lora: {r: 8, alpha: 16, targets: [q_proj, v_proj]}\n")
    assert RunSpec.from_dict(load_spec_file(tmp_path / "run.yaml")).lora == LoraSpec(8, 16.0)
    assert LoraSpec.from_value({"r": 8, "alpha": 16, "targets": ["q_proj", "v_proj"]}) == LoraSpec.parse(
        "r=8,alpha=16,targets=q_proj,v_proj"
    )
    assert LoraSpec.from_value("none") is None and LoraSpec.from_value(None) is None
    with pytest.raises(DpbenchError, match="bad lora spec"):
        LoraSpec.from_value({"r": 8, "alpha": 16, "rank": 2})
    with pytest.raises(DpbenchError, match="r must be an integer"):
        LoraSpec.from_value({"r": True, "alpha": 16})
    with pytest.raises(DpbenchError, match="keep language_model in --trainable"):
        spec(**{"training.trainable": "projector"})


# -- which parameters train ---------------------------------------------------------------------


@pytest.mark.parametrize("groups", ["projector,language_model", "vision_tower,projector,language_model"])
def test_adapters_train_and_the_base_language_model_is_frozen(tiny_model, groups):
    original = dict(tiny_model.model.named_modules())
    model = adapted(tiny_model, spec(**{"training.trainable": groups}))
    names = {n for n, _ in model.model.named_parameters()}
    trainable = {n for n, p in model.model.named_parameters() if p.requires_grad}
    lora = {n for n in names if is_adapter_parameter(n)}
    # q_proj and v_proj of every LM layer: an A and a B each
    assert len(lora) == N_LM_LAYERS * 2 * 2 and all(n.startswith("model.language_model.") for n in lora)
    expected = lora | {n for n in names if n.startswith("model.multi_modal_projector.")}
    if "vision_tower" in groups:
        expected |= {n for n in names if n.startswith("model.vision_tower.")}
    assert trainable == expected
    # the vision tower's own q_proj / v_proj are never adapted; module paths are unchanged
    modules = dict(model.model.named_modules())
    adapted_names = {n for n, m in modules.items() if isinstance(m, LoraLayer)}
    assert len(adapted_names) == N_LM_LAYERS * 2 and all(n.startswith("model.language_model.") for n in adapted_names)
    assert set(original) <= set(modules)
    lora_numel = sum(p.numel() for n, p in model.model.named_parameters() if n in lora)
    total, n_trainable = model.parameter_counts()
    assert total == sum(p.numel() for p in tiny_model.model.parameters()) + lora_numel
    assert n_trainable == sum(p.numel() for n, p in model.model.named_parameters() if n in expected)


@pytest.mark.parametrize(
    "target, fragment",
    [
        ("qkv", "its Linear layers are named"),
        ("fc1", "matches no module of the language model"),  # the vision tower's: out of scope
        ("layers", "only Linear layers can be adapted"),
    ],
)
def test_a_target_outside_the_language_models_linears_errors(tiny_model, target, fragment):
    model = VisionLanguageModel(copy.deepcopy(tiny_model.model), tiny_model.processor, tiny_model.info)
    with pytest.raises(DpbenchError, match=fragment) as info:
        inject_lora(model, LoraSpec(2, 4, targets=(target,)), seed=0)
    assert "\n" not in str(info.value)
    if fragment.startswith("its"):
        assert "q_proj" in str(info.value)


def test_adapter_init_is_seeded_and_leaves_the_global_generator_alone(tiny_model):
    state = torch.get_rng_state()
    first, second, other = (snapshot(adapted(tiny_model, spec(**{"training.seed": s}))) for s in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), state)
    a = [n for n in first if ".lora_A." in n]
    assert a and all(torch.equal(first[n], second[n]) for n in a)
    assert not any(torch.equal(first[n], other[n]) for n in a)


# -- per-example gradients ---------------------------------------------------------------------


def test_opacus_per_sample_gradients_of_the_adapters_match_one_by_one_autograd(
    tiny_model, digit_examples, assert_per_example_gradients_match
):
    model = adapted(tiny_model)
    randomise_b(model)
    params = [p for p in model.model.parameters() if p.requires_grad]
    lora_ids = {id(p) for n, p in model.model.named_parameters() if is_adapter_parameter(n)}
    assert sum(id(p) in lora_ids for p in params) == N_LM_LAYERS * 4
    reference = assert_per_example_gradients_match(model, digit_examples[:4], params)
    assert all(float(g.abs().max()) > 0 for grads in reference for g in grads)  # B random: A's gradients too


@pytest.mark.parametrize("clipping", ["per-sample", "ghost"])
def test_dp_gradient_of_the_adapters_is_the_clipped_mean_in_both_clipping_modes(
    tiny_model, digit_examples, monkeypatch, clipping, autograd_grads
):
    """Noise off, sample rate 1: the released gradient must be Σ min(1, C/‖g_i‖) g_i / B."""
    monkeypatch.setattr(opacus_training, "calibrate_noise", lambda **_: 0.0)
    model = adapted(tiny_model)
    randomise_b(model)
    examples = digit_examples[:6]
    params = [p for p in model.model.parameters() if p.requires_grad]
    reference = autograd_grads(model, examples, params)
    norms = torch.stack([torch.sqrt(sum((g**2).sum() for g in grads)) for grads in reference])
    C = float(norms.median())
    seen = []
    run_spec = spec(
        **{
            "training.batch_size": len(examples),
            "training.physical_batch_size": 4,
            "training.lr": 1e-9,
            "privacy.max_grad_norm": C,
        }
    )
    opacus_training.train_dp_sgd(
        model,
        examples,
        run_spec,
        1e-3,
        label="test",
        clipping=clipping,
        post_noise_hook=lambda ps, audit: seen.append([p.grad.detach().clone() for p in ps]),
    )
    (released,) = seen
    factors = (C / norms).clamp(max=1.0)
    assert (factors < 1).any() and (factors == 1).any()
    for j, g in enumerate(released):
        expected = sum(f * grads[j] for f, grads in zip(factors, reference)) / len(examples)
        torch.testing.assert_close(g, expected, rtol=1e-3, atol=1e-6 * float(norms.max()))


# -- one training step of each kind ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["dpsgd", "dpzo"])
def test_one_step_moves_the_adapters_and_leaves_the_base_weights_bit_identical(
    tiny_model, digit_examples, monkeypatch, method
):
    # DP-SGD with σ = 0: what moves B is its gradient through Opacus, not noise alone;
    # DP-ZO with a fixed σ, sparing the accountant's search
    monkeypatch.setattr(opacus_training, "calibrate_noise", lambda **_: 0.0)
    monkeypatch.setattr(dpzo, "calibrate_noise", lambda **_: 1.5)
    model = adapted(tiny_model, spec(method=method))
    before = snapshot(model)
    run_spec = spec(method=method, **{"training.batch_size": 6})
    report = METHODS.get(method)().train(model, digit_examples, run_spec, 1e-3)
    assert report.steps == 1
    after = snapshot(model)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    lora = {n for n in before if is_adapter_parameter(n)}
    projector = {n for n in before if n.startswith("model.multi_modal_projector.")}
    assert moved <= lora | projector  # every base weight, of the LM and the vision tower, bit-identical
    assert {n for n in lora if ".lora_B." in n} <= moved  # B starts at zero and must leave it
    if method == "dpzo":  # every trainable tensor moves along z
        assert moved == lora | projector


# -- merging and saving --------------------------------------------------------------------------


def test_merged_and_reloaded_models_give_the_adapted_logits(tiny_model, digit_examples, tmp_path):
    model = adapted(tiny_model)
    randomise_b(model, std=0.2)
    examples = digit_examples[:3]
    unmerged = logits(model, examples)
    base = logits(tiny_model, examples)
    assert (unmerged - base).abs().max() > 1e-3  # dropping the adapters unmerged would show
    assert merge_lora(model) == N_LM_LAYERS * 2
    assert not any(isinstance(m, LoraLayer) for m in model.model.modules())
    assert set(model.model.state_dict()) == set(tiny_model.model.state_dict())  # plain HF names again
    torch.testing.assert_close(logits(model, examples), unmerged, rtol=1e-5, atol=1e-5)
    tiny_llava.save(model.model, model.processor, tmp_path / "merged")
    reloaded = load_hf(tmp_path / "merged", "cpu", model.info)
    torch.testing.assert_close(logits(reloaded, examples), unmerged, rtol=1e-5, atol=1e-5)


# -- the spec --------------------------------------------------------------------------------------


def test_spec_round_trip_and_hash_compatibility(committed_results):
    with_lora = spec()
    again = RunSpec.from_dict(json.loads(json.dumps(with_lora.to_dict())))
    assert again == with_lora and again.lora == LORA and again.run_id() == with_lora.run_id()
    assert with_lora.to_dict()["lora"] == {"r": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["q_proj", "v_proj"]}
    assert with_lora.replace(lora=None).run_id() != with_lora.run_id()
    assert RunSpec.from_dict({"lora": {"r": 2, "alpha": 4}}).spec_hash() == RunSpec(lora=LORA).spec_hash()
    # a spec written before LoRA existed (no "lora" key) keeps its run id, as one recording null does
    for result in committed_results:
        assert result["spec"]["lora"] is None
        assert RunSpec.from_record(result["spec"]).run_id() == result["run_id"]
        older = {k: v for k, v in result["spec"].items() if k != "lora"}
        assert RunSpec.from_record(older).run_id() == result["run_id"]


# -- `dpbench run --lora` end to end ------------------------------------------------------------


@pytest.mark.slow
def test_run_with_lora_records_it_and_saves_a_merged_plain_checkpoint(tiny_model, tmp_path, capsys, run_cli):
    source = tmp_path / "tiny"
    tiny_llava.save(tiny_model.model, tiny_model.processor, source)
    assert (
        run_cli(
            "run", "--lora", "r=2,alpha=4,dropout=0", "--trainable", "projector", "--runs-dir", str(tmp_path / "runs")
        )
        == 2
    )
    assert "keep language_model in --trainable" in capsys.readouterr().err
    assert (
        run_cli(
            "run",
            "--method",
            "nonprivate",
            "--model",
            str(source),
            "--lora",
            "r=2,alpha=4,targets=q_proj,v_proj",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--n-train",
            "8",
            "--eval-limit",
            "4",
            "--no-audit",
            "--save-checkpoint",
            "--runs-dir",
            str(tmp_path / "runs"),
        )
        == 0
    )
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert validation_errors(result) == []
    assert result["spec"]["lora"] == LORA.to_dict() == json.loads((run_dir / "spec.json").read_text())["lora"]
    assert RunSpec.from_record(result["spec"]).run_id() == result["run_id"] == run_dir.name
    expected = adapted(tiny_model)  # the same adapters on the same model: the counts the run must report
    assert [result["model"]["parameters_total"], result["model"]["parameters_trainable"]] == list(
        expected.parameter_counts()
    )
    original = tiny_model.model.state_dict()
    with (
        safe_open(run_dir / "checkpoint" / "model.safetensors", "pt") as f,
        safe_open(source / "model.safetensors", "pt") as g,
    ):
        assert set(f.keys()) == set(g.keys())  # merged: no base_layer / lora_A / lora_B names
    saved = load_hf(run_dir / "checkpoint", "cpu", tiny_model.info).model.state_dict()
    changed = {k for k in saved if not torch.equal(saved[k], original[k])}
    lm_changed = {k for k in changed if k.startswith("model.language_model.")}
    assert lm_changed == {
        f"model.language_model.layers.{i}.self_attn.{m}.weight"
        for i in range(N_LM_LAYERS)
        for m in ("q_proj", "v_proj")
    }
    assert changed - lm_changed == {k for k in original if k.startswith("model.multi_modal_projector.")}
    for k in lm_changed:  # two Adam steps of B: a small update of W, not a re-initialised layer
        assert (saved[k] - original[k]).abs().max() < 0.1 * original[k].abs().max()

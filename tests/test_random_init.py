"""The random-init systems models: the published shapes transcribed right (their parameter counts
are the published totals), truncation and narrowing as documented, each architecture's image
geometry, and `dpbench run` refusing them before anything runs."""

import pytest
import torch

from dpbench.errors import DpbenchError
from dpbench.models.loading import is_systems_only, load_model
from dpbench.models.random_init import (
    LLAVA_1_5_7B,
    QWEN2_VL_2B,
    SMOLVLM_256M,
    ModelShape,
    parameter_count,
    shaped_configs,
)
from dpbench.registry import MODELS

PUBLIC = [LLAVA_1_5_7B, QWEN2_VL_2B, SMOLVLM_256M]
# registered name -> (a shape small enough for a CPU test, the visual tokens per image the checkpoint makes)
SMALL = {
    "llava-1.5-7b-random": (ModelShape(1, 128), 576),
    "qwen2-vl-2b-random": (ModelShape(1, 768), 256),
    "smolvlm-256m-random": (ModelShape(1, None), 64),
}


@pytest.mark.parametrize("public", PUBLIC, ids=lambda p: p.checkpoint)
def test_full_shapes_have_the_published_parameter_counts(public):
    assert parameter_count(public) == public.parameters


def test_every_systems_model_is_registered_and_tested_here():
    assert sorted(n for n in MODELS if is_systems_only(n)) == sorted(SMALL)
    assert not is_systems_only("tiny-llava")


def test_layers_truncate_both_towers_in_proportion_and_width_keeps_head_size():
    text, vision = shaped_configs(LLAVA_1_5_7B, ModelShape(layers=4, hidden_size=1024))
    assert text["num_hidden_layers"] == 4 and vision["num_hidden_layers"] == 3  # 24 / 32 of 4
    assert text["num_attention_heads"] == 8 and text["head_dim"] == 128 and text["intermediate_size"] == 2752
    text, vision = shaped_configs(QWEN2_VL_2B, ModelShape(layers=1, hidden_size=768))
    assert vision["depth"] == 2 and vision["hidden_size"] == 768  # ceil(32 / 28): the merger feeds the new width
    assert (text["num_attention_heads"], text["num_key_value_heads"]) == (6, 1)  # the 6:1 grouping kept
    assert parameter_count(LLAVA_1_5_7B, ModelShape(layers=2)) < parameter_count(LLAVA_1_5_7B) / 8


@pytest.mark.parametrize(
    "shape, message",
    [
        (ModelShape(layers=33), "1 to 32"),
        (ModelShape(hidden_size=1000), "multiple of 128"),
        (ModelShape(hidden_size=8192), "up to 4096"),
    ],
)
def test_impossible_shapes_are_refused(shape, message):
    with pytest.raises(DpbenchError, match=message):
        shaped_configs(LLAVA_1_5_7B, shape)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_each_model_has_its_checkpoints_image_geometry_and_trains(name, digit_examples):
    shape, tokens = SMALL[name]
    model = load_model(name, "cpu", shape)
    assert model.info.source == "random-init (systems only)" and model.visual_tokens_per_image == tokens
    batch = model.encode(digit_examples[:2], [e.target for e in digit_examples[:2]])
    assert int((batch["input_ids"] == model.image_token_id).sum()) == 2 * tokens
    model.set_trainable(["language_model"])
    losses = model.per_example_loss(batch)
    assert losses.shape == (2,) and torch.isfinite(losses).all()
    losses.sum().backward()
    trained = [p for p in model.model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)


def test_run_refuses_a_random_init_model_in_one_line_before_anything_is_written(capsys, tmp_path, run_cli):
    assert run_cli("run", "--model", "llava-1.5-7b-random", "--runs-dir", str(tmp_path / "runs")) == 2
    err = capsys.readouterr().err.strip()
    assert "random weights" in err and "dpbench bench" in err and "\n" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_sweep_with_a_random_init_model_is_refused_before_it_starts(capsys, tmp_path, run_cli):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base: {model: smolvlm-256m-random}\ntasks: [scienceqa]\nmethods: [dpsgd]\nepsilons: [8]\nseeds: [0]\n"
    )
    assert run_cli("sweep", str(grid), "--runs-dir", str(tmp_path / "runs")) == 2
    assert "random weights" in capsys.readouterr().err


def test_layers_on_a_trained_model_are_refused(capsys, tmp_path, run_cli):
    assert run_cli("bench", "--layers", "1,2", "--out-dir", str(tmp_path)) == 2
    assert "random-init systems models only" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

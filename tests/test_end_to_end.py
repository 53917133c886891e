"""`dpbench run` end to end on a tiny random LLaVA saved as a local checkpoint (the same code
path as `--model /path/to/llava`), and the embedded model's build-and-cache path."""

import json

import pytest

from dpbench.models import loading, pretrain
from dpbench.schemas import validation_errors


@pytest.mark.slow
def test_dpsgd_run_writes_a_valid_audited_result(
    checkpoint, tmp_path, monkeypatch, dp_accounting_epsilon, dp_accounting_pld_epsilon, run_cli
):
    monkeypatch.chdir(tmp_path)
    code = run_cli(
        "run",
        "--method",
        "dpsgd",
        "--model",
        str(checkpoint),
        "--steps",
        "3",
        "--batch-size",
        "16",
        "--n-train",
        "48",
        "--eval-limit",
        "24",
        "--epsilon",
        "3",
        "--attacks",
        "loss,reference",
    )
    assert code == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert validation_errors(result) == []
    p = result["privacy"]
    assert p["private"] and p["steps"] == 3 and p["epsilon"] <= 3.0
    assert p["sample_rate"] == pytest.approx(16 / 48)
    release = (p["noise_multiplier"], p["sample_rate"], p["steps"], p["delta"])
    assert p["accountant"] == "prv" and p["epsilon"] == pytest.approx(dp_accounting_pld_epsilon(*release), rel=0.01)
    assert p["epsilon_rdp"] == pytest.approx(dp_accounting_epsilon(*release), rel=0.01)  # RDP's, beside it
    assert result["model"]["source"] == "local" and result["dataset"]["source"] == "embedded-sample"
    assert set(result["audit"]["attacks"]) == {"loss", "reference"}
    assert result["audit"]["n_members"] == result["audit"]["n_nonmembers"] == 48
    mem = result["systems"]["peak_memory"][0]
    assert mem["kind"] == "cpu-rss-above-baseline" and mem["peak_bytes"] > 0
    assert result["systems"]["train"]["samples_per_s"] > 0
    for name in ("spec.json", "audit.md", "audit.html", "audit_scores.npz"):
        assert (run_dir / name).is_file()
    # re-audit from the saved scores rewrites the same summary
    assert run_cli("audit", str(run_dir)) == 0
    again = json.loads((run_dir / "result.json").read_text())
    assert again["audit"]["attacks"]["loss"] == result["audit"]["attacks"]["loss"]


@pytest.mark.slow
def test_both_one_run_audits_land_in_a_valid_result_and_survive_a_reaudit(checkpoint, tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    args = ["run", "--method", "dualpriv", "--model", str(checkpoint), "--steps", "3", "--batch-size", "16"]
    args += ["--n-train", "48", "--eval-limit", "8", "--attacks", "loss", "--audit-references", "0"]
    assert run_cli(*args, "--gradient-canaries", "200", "--canaries", "10") == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert validation_errors(result) == []
    w, c = result["audit"]["whitebox"], result["audit"]["canary"]
    assert w["m"] == 200 and w["steps_observed"] == 3 and w["accounted_epsilon"] == result["privacy"]["epsilon"]
    assert w["epsilon_lower_bound"] <= w["ceiling"] and not w["violation"]
    assert c["m"] == 10 and result["dataset"]["n_canaries"] == c["included"]
    # on the audit block the canaries leave training as it was: no utility note says otherwise
    assert w["placement"] == "audit-block" and not any("gradient canaries" in n for n in result["utility"]["notes"])
    assert "White-box audit" in (run_dir / "audit.md").read_text()
    import numpy as np

    saved = np.load(run_dir / "audit_whitebox.npz")  # the scores, for a re-summary without retraining
    assert saved["scores"].shape == (200,) and int(saved["included"].sum()) == w["included"]
    assert run_cli("audit", str(run_dir)) == 0  # the white-box audit was made in training: kept as it was
    assert json.loads((run_dir / "result.json").read_text())["audit"]["whitebox"] == w


@pytest.mark.slow
def test_nonprivate_run_records_no_privacy(checkpoint, tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    assert (
        run_cli(
            "run",
            "--method",
            "nonprivate",
            "--model",
            str(checkpoint),
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--n-train",
            "16",
            "--eval-limit",
            "8",
            "--no-audit",
        )
        == 0
    )
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert result["privacy"]["private"] is False and result["privacy"]["epsilon"] is None
    # --no-audit skips the attacks; the white-box canaries, made in training, stay: the no-noise control
    audit = result["audit"]
    assert audit["attacks"] == {} and audit["whitebox"]["accounted_epsilon"] is None
    assert not audit["whitebox"]["violation"] and audit["whitebox"]["parametric"] is None


@pytest.mark.slow
def test_eval_split_validation_scores_the_held_out_validation_examples(checkpoint, tmp_path, monkeypatch, run_cli):
    from dpbench.tasks.scienceqa import ScienceQA

    scored, evaluate = [], ScienceQA.evaluate

    def spy(self, model, examples, **kw):
        scored.append([e.uid for e in examples])
        return evaluate(self, model, examples, **kw)

    monkeypatch.setattr(ScienceQA, "evaluate", spy)
    monkeypatch.chdir(tmp_path)
    assert (
        run_cli(
            "run",
            "--method",
            "nonprivate",
            "--model",
            str(checkpoint),
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--n-train",
            "8",
            "--eval-limit",
            "6",
            "--eval-split",
            "validation",
            "--no-audit",
        )
        == 0
    )
    data = ScienceQA().load(None)
    validation = [e.uid for e in data.nonmembers[:6]]
    assert scored == [validation, validation]  # the fine-tuned model, then zero-shot
    assert not set(validation) & {e.uid for e in data.test + data.train}
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    assert validation_errors(result) == []
    assert result["utility"]["split"] == "validation" and result["spec"]["eval_split"] == "validation"
    assert result["dataset"]["n_test"] == 6


# the weights behind the committed results (built from the recipe, AMD EPYC, 2 cores)
SHIPPED_SHA256 = "3e28ed6f382897b47ace1491e3e46899baf67d29e814951fb3197c1730f52790"


def test_the_default_model_loads_the_shipped_weights_without_building(isolated_cache):
    loader = loading.TinyLlava()
    assert loader.path().parent == loading.SHIPPED_WEIGHTS
    model = loader.load("cpu")
    assert model.info.weights_sha256 == SHIPPED_SHA256
    assert not isolated_cache.exists() or not any(isolated_cache.iterdir())  # nothing built or cached


def test_weights_hash_covers_every_shard(tmp_path):
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"a")
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"b")
    both = loading.weights_sha256(tmp_path)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"cc")  # (size, mtime) key the per-process cache
    assert loading.weights_sha256(tmp_path) != both
    assert loading.weights_sha256(tmp_path / "missing") is None


@pytest.mark.slow
def test_embedded_model_is_built_once_and_reused(isolated_cache, monkeypatch):
    monkeypatch.setattr(pretrain, "PRETRAIN_LANGUAGE", dict(steps=2, batch_size=4, lr=1e-3, seed=0, n=16))
    monkeypatch.setattr(pretrain, "PRETRAIN_VISION", dict(steps=2, batch_size=8, lr=1e-3, seed=0))
    monkeypatch.setattr(pretrain, "PRETRAIN", dict(steps=2, batch_size=4, lr=1e-3, seed=0))
    loader = loading.TinyLlava()
    path = loader.ensure_built()
    assert (path / "config.json").is_file() and (path / "pretrain_loss.txt").is_file()
    assert (path / "pretrain_language_loss.txt").is_file()
    stamp = (path / "config.json").stat().st_mtime_ns
    model = loader.load("cpu")
    assert model.info.source == "embedded-pretrained" and (path / "config.json").stat().st_mtime_ns == stamp
    assert path.parent != loading.SHIPPED_WEIGHTS and model.info.weights_sha256 == loading.weights_sha256(path)
    assert model.model.config.image_seq_length == model.visual_tokens_per_image


@pytest.mark.slow
def test_a_default_run_prints_no_third_party_warning_or_bar(tmp_path):
    """Only dpbench's own lines: no Python warning, no transformers loading bar; --verbose shows them."""
    import subprocess
    import sys

    def output(*flags):
        args = ["run", "--method", "dpsgd", "--steps", "2", "--eval-limit", "4", "--attacks", "loss"]
        args += ["--audit-references", "0", "--runs-dir", str(tmp_path / "runs")]
        cmd = [sys.executable, "-m", "dpbench.cli", *flags, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    quiet = output()
    assert "Warning" not in quiet and "warnings.warn" not in quiet and "Loading weights" not in quiet
    assert "secure_rng=true" in quiet  # the secure-RNG notice in dpbench's words
    loud = output("--verbose")
    assert "Secure RNG turned off" in loud and "Loading weights" in loud

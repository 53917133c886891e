"""Shared fixtures: a tiny *random* LLaVA (seconds to build) for unit tests, and an isolated
cache so tests never touch the user's ~/.cache/dpbench (except the pre-trained model,
which the slow end-to-end tests reuse on purpose)."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dpbench.models.base import ModelInfo, VisionLanguageModel
from dpbench.output import quiet_third_party
from dpbench.tasks.base import Example
from dpbench.tasks.digits import private_digits

CORPUS = [
    "USER: Which digit is shown in the image? A. 3 B. 7 Answer with the option's letter from the given choices "
    "directly. ASSISTANT: B",
    "Context: The image shows a handwritten digit. Is the number even or odd? yes no",
]


def build_tiny_model() -> VisionLanguageModel:
    quiet_third_party()
    from dpbench.models import tiny_llava

    tok = tiny_llava.build_tokenizer(CORPUS * 5)
    model = tiny_llava.build_model(tok, seed=0)
    model.eval()
    return VisionLanguageModel(model, tiny_llava.build_processor(tok), ModelInfo("tiny-random", "local", None, "llava"))


@pytest.fixture(scope="session")
def tiny_model() -> VisionLanguageModel:
    return build_tiny_model()


@pytest.fixture
def fresh_tiny_model():
    """A factory of new tiny random LLaVAs, the same weights each time (the session's one is trained in place)."""
    return build_tiny_model


@pytest.fixture(scope="session")
def checkpoint(tiny_model, tmp_path_factory):
    """The tiny random LLaVA saved as a local checkpoint: the code path of `--model /path/to/llava`."""
    path = tmp_path_factory.mktemp("tiny-random-llava")
    tiny_model.model.save_pretrained(path)
    tiny_model.processor.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def digit_examples(tmp_path_factory) -> list[Example]:
    folder = tmp_path_factory.mktemp("digits")
    out = []
    for i, d in enumerate(private_digits()[:12]):
        path = folder / f"{i}.png"
        d.image().save(path)
        wrong = (d.label + 1) % 10
        choices = [str(d.label), str(wrong)] if i % 2 else [str(wrong), str(d.label)]
        out.append(
            Example(
                uid=str(i),
                prompt=f"Which digit is shown in the image?\nA. {choices[0]}\nB. {choices[1]}\n"
                "Answer with the option's letter from the given choices directly.",
                target="AB"[choices.index(str(d.label))],
                image=path,
                choices=("A", "B"),
                answer=choices.index(str(d.label)),
                group=str(d.index),
            )
        )
    return out


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DPBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# -- ScienceQA fixtures in both published layouts -----------------------------------------
PROBLEMS = {
    "1": {
        "question": "Which animal is a mammal?",
        "choices": ["frog", "whale", "shark"],
        "answer": 1,
        "hint": "Mammals breathe air.",
        "image": "image.png",
        "split": "train",
        "subject": "natural science",
    },
    "2": {
        "question": "Which is a solid?",
        "choices": ["ice", "steam"],
        "answer": 0,
        "hint": "",
        "image": "image.png",
        "split": "val",
    },
    "3": {"question": "What is 2 + 2?", "choices": ["3", "4"], "answer": 1, "hint": "", "image": None, "split": "val"},
    "4": {
        "question": "Which color is the sky?",
        "choices": ["blue", "green", "red", "black"],
        "answer": 0,
        "hint": "Look up.",
        "image": "image.png",
        "split": "test",
    },
    "5": {
        "question": "Same picture as problem 1?",
        "choices": ["yes", "no"],
        "answer": 0,
        "hint": "",
        "image": "image.png",
        "split": "val",
    },
}


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), color).save(buf, format="PNG")
    return buf.getvalue()


def _write_layout_a(root):
    colors = {"1": (255, 0, 0), "2": (0, 255, 0), "4": (0, 0, 255), "5": (255, 0, 0)}  # 5 reuses 1's image
    for pid, p in PROBLEMS.items():
        if p["image"]:
            folder = root / "images" / p["split"] / pid
            folder.mkdir(parents=True)
            (folder / "image.png").write_bytes(_png(colors[pid]))
    (root / "problems.json").write_text(json.dumps(PROBLEMS))
    splits = {"train": ["1"], "val": ["2", "3", "5"], "test": ["4"]}
    (root / "pid_splits.json").write_text(json.dumps(splits))
    return root


def _write_layout_b(root):
    root.mkdir(parents=True, exist_ok=True)
    for split, name in (
        ("train", "train-00000-of-00001.parquet"),
        ("val", "validation-00000-of-00001.parquet"),
        ("test", "test-00000-of-00001.parquet"),
    ):
        rows = [
            dict(
                p,
                image={"bytes": _png((i * 40, 10, 10)), "path": None} if p["image"] else None,
                task="closed choice",
                grade="grade2",
                topic="t",
                category="c",
                skill="s",
                lecture="",
                solution="",
            )
            for i, (pid, p) in enumerate(PROBLEMS.items())
            if p["split"] == split
        ]
        for r in rows:
            r.pop("split")
        pq.write_table(pa.Table.from_pylist(rows), root / "data" / name if (root / "data").exists() else root / name)
    return root


@pytest.fixture
def write_layout_a():
    return _write_layout_a


@pytest.fixture
def write_layout_b():
    return _write_layout_b


@pytest.fixture(scope="session")
def autograd_grads():
    """Reference per-example gradients of `params`: plain autograd, one example per backward."""

    def grads(model, examples, params) -> list[list]:
        out = []
        for e in examples:
            model.model.zero_grad(set_to_none=True)
            model.per_example_loss(model.encode([e], [e.target])).sum().backward()
            out.append([p.grad.detach().clone() for p in params])
        model.model.zero_grad(set_to_none=True)
        return out

    return grads


@pytest.fixture(scope="session")
def assert_per_example_gradients_match(autograd_grads):
    """The per-example-gradient check every model set-up shares: Opacus' `grad_sample` of each of
    `params` from one batched backward (left-padded rows of mixed lengths) against one backward
    per example. Returns the reference gradients ([example][parameter])."""
    import torch
    from opacus import GradSampleModule

    from dpbench.methods import grad_samplers  # noqa: F401  (the RMSNorm rules)

    def check(model, examples, params) -> list[list]:
        assert params, "no trainable parameter to check"
        reference = autograd_grads(model, examples, params)
        assert any(float(g.abs().max()) > 0 for grads in reference for g in grads)  # zeros would match anything
        gsm = GradSampleModule(model.model, loss_reduction="sum").train()  # hooks skip eval mode
        try:
            model.per_example_loss(model.encode(examples, [e.target for e in examples]), model=gsm).sum().backward()
            for j, p in enumerate(params):
                for i in range(len(examples)):
                    # float32 sums in another order agree to ~1e-6 of the scale; mixing examples would be O(1)
                    ref = reference[i][j]
                    torch.testing.assert_close(
                        p.grad_sample[i], ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()) + 1e-8
                    )
        finally:
            gsm._close()
            model.model.zero_grad(set_to_none=True)
            model.model.eval()
        return reference

    return check


@pytest.fixture(scope="session")
def run_cli():
    """`dpbench ARGS...` in-process, as the console script runs it; returns the exit code (the
    output goes to capsys)."""
    from dpbench.cli import main

    def call(*args) -> int:
        with pytest.raises(SystemExit) as info:
            main(list(args))
        return info.value.code

    return call


@pytest.fixture(scope="session")
def dp_accounting_epsilon():
    """ε of Poisson-subsampled Gaussian releases by Google's dp-accounting (RDP): the
    independent accountant every accounting test compares with."""
    import dp_accounting
    from dp_accounting import rdp

    def epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
        accountant = rdp.RdpAccountant()
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
        return accountant.get_epsilon(delta)

    return epsilon


@pytest.fixture(scope="session")
def dp_accounting_pld_epsilon():
    """ε of Poisson-subsampled Gaussian releases by dp-accounting's PLD accountant: the tight
    oracle the PRV headline is checked against."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    def epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        accountant = pld_privacy_accountant.PLDAccountant()
        accountant.compose(dp_accounting.SelfComposedDpEvent(event, steps))
        return accountant.get_epsilon(delta)

    return epsilon


@pytest.fixture(scope="session")
def committed_results() -> list[dict]:
    """Every training run's result under leaderboard/results (not the unlearning runs'), read and
    schema-checked by the leaderboard's own loader."""
    from pathlib import Path

    from dpbench.leaderboard.collect import collect

    loaded = collect([Path(__file__).resolve().parents[1] / "leaderboard" / "results"])
    assert not loaded.errors and loaded.results
    return [r.data for r in loaded.results if r.data.get("kind") != "dpbench-unlearn"]


@pytest.fixture(scope="session")
def finished_parent_run(checkpoint, tmp_path_factory):
    """(run folder, runs folder) of a finished non-private run of the tiny random LLaVA, saved with
    its checkpoint: the parent `dpbench unlearn` starts from."""
    from dpbench.run_folder import RunFolder
    from dpbench.runner import run
    from dpbench.spec import RunSpec

    runs = tmp_path_factory.mktemp("runs")
    spec = RunSpec.from_dict(
        {
            "method": "nonprivate",
            "model": str(checkpoint),
            "training": {"n_train": 40, "steps": 2, "batch_size": 8},
            "attacks": [],
            "audit": {"gradient_canaries": 0},
            "eval_limit": 30,
        }
    )
    result = run(spec, runs, save_checkpoint=True, log=lambda *a: None)
    return RunFolder.of(runs, result.run_id).path, runs

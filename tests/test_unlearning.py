"""`dpbench unlearn`: forget requests, the losses against their definitions, every registered
method end to end on a tiny parent, and bad input refused before anything loads."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dpbench.errors import DpbenchError
from dpbench.registry import UNLEARNERS
from dpbench.run_folder import RunFolder
from dpbench.schemas import load_result
from dpbench.spec import RunSpec
from dpbench.tasks.digits import label_of
from dpbench.unlearning.losses import masked_kl, npo
from dpbench.unlearning.requests import ForgetRequest, digit_of, select
from dpbench.unlearning.run import make_spec, reference_spec, unlearn
from dpbench.unlearning.spec import UnlearnSpec


# -- forget requests ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, kind, count, percent",
    [
        ("examples:5", "examples", 5, None),
        ("examples:1%", "examples", None, 1.0),
        ("examples:2.5%", "examples", None, 2.5),
    ],
)
def test_examples_requests_parse(text, kind, count, percent):
    r = ForgetRequest.parse(text)
    assert (r.kind, r.count, r.percent) == (kind, count, percent)
    assert str(r) == text and r.yardstick == "retrain"


@pytest.mark.parametrize(
    "text",
    [
        "examples",
        "examples:",
        "examples:0",
        "examples:-3",
        "examples:abc",
        "examples:0%",
        "examples:101%",
        "examples:nan%",
        "people:3",
        "concept:",
        ":3",
    ],
)
def test_bad_requests_are_one_line(text):
    with pytest.raises(DpbenchError) as info:
        ForgetRequest.parse(text)
    assert "\n" not in str(info.value)


def _digits(tmp_path, n=40):
    from dpbench.examples import Example
    from dpbench.tasks.digits import private_digits

    return [
        Example(
            f"e{i}",
            "Which digit?",
            "A",
            tmp_path / f"{i}.png",
            ("A", "B"),
            0,
            meta={"source_image": f"sklearn-digits/{d.index}"},
        )
        for i, d in enumerate(private_digits()[:n])
    ]


def test_examples_selection_is_seeded_sized_and_disjoint(tmp_path):
    train = _digits(tmp_path)
    a = select(ForgetRequest.parse("examples:10%"), train, [], seed=1, embedded=True)
    b = select(ForgetRequest.parse("examples:10%"), train, [], seed=1, embedded=True)
    c = select(ForgetRequest.parse("examples:10%"), train, [], seed=2, embedded=True)
    assert len(a.forget) == 4 and len(a.retain) == 36
    assert [e.uid for e in a.forget] == [e.uid for e in b.forget] != [e.uid for e in c.forget]
    assert not {e.uid for e in a.forget} & {e.uid for e in a.retain}


def test_a_concept_selects_exactly_its_digit(tmp_path):
    train, test = _digits(tmp_path), _digits(tmp_path)[:20]
    fs = select(ForgetRequest.parse("concept:three"), train, test, seed=0, embedded=True)
    assert fs.forget and all(digit_of(e) == 3 for e in fs.forget)
    assert all(digit_of(e) != 3 for e in fs.retain)
    assert all(digit_of(e) == 3 for e in fs.generality) and all(digit_of(e) != 3 for e in fs.neighbours)
    assert fs.concept_names == ("3", "three")
    assert select(ForgetRequest.parse("concept:3"), train, test, 0, True).forget == fs.forget


def test_digit_of_reads_the_sources_and_coco_names(tmp_path):
    from dpbench.examples import Example

    assert digit_of(Example("x", "p", "t", meta={"source_image": "sklearn-digits/10"})) == label_of(10)
    assert digit_of(Example("x", "p", "t", Path("COCO_val2014_000000000011.png"))) == label_of(10)
    assert digit_of(Example("x", "p", "t", Path("elsewhere.png"))) is None


@pytest.mark.parametrize("text", ["concept:eleven", "concept:topic"])
def test_concepts_that_cannot_select_are_refused(tmp_path, text):
    with pytest.raises(DpbenchError):
        select(ForgetRequest.parse(text), _digits(tmp_path), [], 0, embedded=text != "concept:topic")


def test_a_request_for_every_example_is_refused(tmp_path):
    with pytest.raises(DpbenchError, match="retain"):
        select(ForgetRequest.parse("examples:100%"), _digits(tmp_path, 5), [], 0, True)


# -- losses against their definitions ------------------------------------------------------
def test_npo_at_the_reference_is_two_over_beta_log_two(tiny_model, digit_examples):
    value = npo(tiny_model, tiny_model, digit_examples[:4], beta=0.5)
    assert math.isclose(value.item(), (2 / 0.5) * math.log(2), rel_tol=1e-5)


def test_masked_kl_is_zero_at_the_original_and_the_vocabulary_mask_hides_its_tokens(tiny_model, digit_examples):
    examples = digit_examples[:4]
    targets = [e.target for e in examples]
    assert masked_kl(tiny_model, tiny_model, examples, targets).item() == pytest.approx(0.0, abs=1e-6)
    moved = copy.deepcopy(tiny_model)
    head = moved.model.get_output_embeddings().weight
    tokens = [5, 6, 7]
    with torch.no_grad():  # only the masked tokens' logits change
        head[tokens] += 3.0 * torch.randn_like(head[tokens])
    assert masked_kl(moved, tiny_model, examples, targets).item() > 1e-3
    assert masked_kl(moved, tiny_model, examples, targets, vocab_mask=tokens).item() == pytest.approx(0.0, abs=1e-5)
    none_kept = torch.zeros(len(examples), 1, dtype=torch.bool)
    assert masked_kl(moved, tiny_model, examples, targets, token_mask=none_kept).item() == 0.0


# -- end to end on a tiny parent -----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", UNLEARNERS.names())
def test_every_method_unlearns_and_writes_a_valid_result(finished_parent_run, name):
    folder, runs = finished_parent_run
    spec = make_spec(folder, name, "examples:4", seed=0, steps=2, batch_size=4)
    result = unlearn(spec, folder, runs, log=lambda *a: None)
    assert load_result(RunFolder.of(runs, spec.run_id()).result) == result  # schema-valid, as written
    m = result["metrics"]
    assert result["request"]["n_forget"] == 4 and result["request"]["n_retain"] == 36
    assert 0 <= m["efficacy"]["unlearned"] <= 1 and m["test_metric"]["unlearned"] is not None
    if name == "retrain":
        assert m["distance_to_retrain"] is None and result["method"]["details"]["n_train"] == 36
    else:
        assert m["efficacy"]["retrain"] is not None and m["distance_to_retrain"] is not None
        assert len(result["method"]["loss_curve"]) == (0 if name == "noop" else 2)


@pytest.mark.slow
def test_noop_measures_as_its_parent_and_retrain_is_reused(finished_parent_run):
    folder, runs = finished_parent_run
    spec = make_spec(folder, "noop", "examples:4", seed=0)
    result = unlearn(spec, folder, runs, log=lambda *a: None)
    m = result["metrics"]
    for key in ("efficacy", "test_metric", "forget_loss_mean", "fluency_perplexity"):
        assert m[key]["unlearned"] == pytest.approx(m[key]["parent"], rel=1e-6), key
    d = m["distance_to_retrain"]
    assert d["unlearned"] == pytest.approx(d["parent"])
    reference = reference_spec(spec)  # the seed-0 gold standard every method on examples:4 shares
    assert (
        result["systems"]["retrain_wall_s"]
        == load_result(RunFolder.of(runs, reference.run_id()).result)["systems"]["wall_s"]
    )
    assert (RunFolder.of(runs, reference.run_id()).checkpoint).is_dir()


@pytest.mark.slow
def test_gradient_ascent_raises_the_forget_loss(finished_parent_run):
    folder, runs = finished_parent_run
    ga = unlearn(make_spec(folder, "ga", "examples:4", seed=3, steps=4, lr=1e-2), folder, runs, log=lambda *a: None)
    assert ga["metrics"]["forget_loss_mean"]["unlearned"] > ga["metrics"]["forget_loss_mean"]["parent"]
    assert ga["method"]["loss_curve"][-1] < ga["method"]["loss_curve"][0]  # it minimises -loss


@pytest.mark.slow
def test_the_result_is_reproducible(finished_parent_run, tmp_path):
    folder, runs = finished_parent_run
    spec = make_spec(folder, "gradiff", "examples:4", seed=5, steps=2)
    a = unlearn(spec, folder, runs, log=lambda *a: None)
    b = unlearn(spec, folder, tmp_path / "other", log=lambda *a: None)
    assert a["metrics"] == b["metrics"] and a["method"]["loss_curve"] == b["method"]["loss_curve"]


# -- bad input: one line, exit 2, nothing written ---------------------------------------------
@pytest.mark.slow
def test_bad_input_is_one_line_before_anything_loads(finished_parent_run, tmp_path, capsys, run_cli):
    folder, _ = finished_parent_run
    runs = tmp_path / "runs"
    cases = [
        (["--method", "forgetful", "--forget", "examples:1"], "unknown unlearning method"),
        (["--method", "ga", "--forget", "examples:x"], "bad forget request"),
        (["--method", "ga", "--forget", "examples:1", "--option", "nope=1"], "no option"),
        (["--method", "kl", "--forget", "examples:1", "--option", "kl_weight=abc"], "finite number"),
        (["--method", "ga", "--forget", "examples:40"], "leave some to retain"),
        (["--method", "ga", "--forget", "examples:1", "--steps", "0"], "steps"),
        (["--method", "ga", "--forget", "examples:1", "--audit-pairs", "2"], "at least 3"),
    ]
    for args, message in cases:
        assert run_cli("unlearn", str(folder), *args, "--runs-dir", str(runs)) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not runs.exists()


def test_bad_input_is_one_line_before_the_parent_is_read(tmp_path, capsys, run_cli, committed_results):
    """The fast counterpart of the test above: what is refused from the arguments alone, from a
    folder with no result, and from a finished run saved without its checkpoint."""
    runs = tmp_path / "runs"
    empty = tmp_path / "empty"
    empty.mkdir()
    no_checkpoint = tmp_path / "no-checkpoint"
    no_checkpoint.mkdir()
    (no_checkpoint / "result.json").write_text(json.dumps(committed_results[0]))
    cases = [
        (empty, ["--method", "forgetful", "--forget", "examples:1"], "unknown unlearning method"),
        (empty, ["--method", "ga", "--forget", "examples:x"], "bad forget request"),
        (empty, ["--method", "ga", "--forget", "examples:1", "--option", "nope=1"], "no option"),
        (empty, ["--method", "kl", "--forget", "examples:1", "--option", "kl_weight=abc"], "finite number"),
        (empty, ["--method", "ga", "--forget", "examples:1", "--audit-pairs", "2"], "at least 3"),
        (empty, ["--method", "ga", "--forget", "examples:1"], "has no result.json"),
        (no_checkpoint, ["--method", "ga", "--forget", "examples:1"], "--save-checkpoint"),
    ]
    for folder, args, message in cases:
        assert run_cli("unlearn", str(folder), *args, "--runs-dir", str(runs)) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not runs.exists()


@pytest.mark.slow
def test_a_run_without_checkpoint_is_refused(finished_parent_run, tmp_path, capsys, run_cli):
    folder, _ = finished_parent_run
    copy_dir = tmp_path / "no-checkpoint"
    copy_dir.mkdir()
    (copy_dir / "result.json").write_text((Path(folder) / "result.json").read_text())
    assert run_cli("unlearn", str(copy_dir), "--method", "ga", "--forget", "examples:1") == 2
    assert "--save-checkpoint" in capsys.readouterr().err


def test_every_method_takes_its_defaults_and_refuses_an_unknown_option():
    # its base class, its name and its docstring: test_registry.py, for every registry
    for name in UNLEARNERS.names():
        cls = UNLEARNERS.get(name)
        assert cls().opts == cls.options  # its defaults pass its own checks
        with pytest.raises(DpbenchError, match="has no option"):
            cls(not_an_option=1)
    assert {"retrain", "finetune", "ga", "gradiff", "kl", "idk", "npo", "siu", "noop"} <= set(UNLEARNERS.names())


def test_spec_ids_follow_every_field():
    base = UnlearnSpec("p", "ga", "examples:1", {}, 0, lr=1e-4)
    ids = {
        base.run_id(),
        base.replace(seed=1).run_id(),
        base.replace(forget="examples:2").run_id(),
        base.replace(lr=2e-4).run_id(),
        base.replace(options={"x": 1}).run_id(),
    }
    assert len(ids) == 5 and np.all([i.startswith("unlearn-ga-") for i in ids])


@pytest.mark.slow
def test_the_readme_snippet_adds_a_method_that_runs(finished_parent_run, tmp_path, monkeypatch):
    """`unlearning/README.md`'s "Adding an unlearning method" code, as a user's file: registered by
    its import, listed, and run end to end."""
    import importlib
    import re
    import sys

    readme = (Path(__file__).resolve().parents[1] / "unlearning" / "README.md").read_text()
    code = re.search(r"## Adding an unlearning method.*?```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "my_unlearner.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    items = dict(UNLEARNERS._items)
    try:
        importlib.import_module("my_unlearner")
        assert "my-unlearner" in UNLEARNERS.names()
        folder, runs = finished_parent_run
        spec = make_spec(folder, "my-unlearner", "examples:4", {"scale": 2.0}, seed=0, steps=2)
        result = unlearn(spec, folder, runs, log=lambda *a: None)
        assert result["spec"]["options"] == {"scale": 2.0} and len(result["method"]["loss_curve"]) == 2
    finally:
        UNLEARNERS._items.clear()
        UNLEARNERS._items.update(items)
        sys.modules.pop("my_unlearner", None)


# -- the sweep file's unlearn section --------------------------------------------------------
@pytest.mark.parametrize(
    "section, message",
    [
        ({"methods": ["ga"], "requests": ["examples:1"]}, "mapping of"),
        ({"methods": ["gaa"], "requests": ["examples:1"], "seeds": [0]}, "unknown unlearning method"),
        ({"methods": ["ga"], "requests": ["examples:x"], "seeds": [0]}, "bad forget request"),
        ({"methods": ["ga"], "requests": ["examples:1"], "seeds": [-1]}, "non-negative"),
        ({"methods": ["ga"], "requests": ["examples:1"], "seeds": [0], "recipe": {"epochs": 3}}, "recipe"),
        ({"methods": ["ga"], "requests": ["examples:1"], "seeds": [0], "recipe": {"steps": "x"}}, "steps"),
        ({"methods": ["ga"], "requests": ["examples:1"], "seeds": [0], "recipe": {"lr": "fast"}}, "lr"),
        ({"methods": "ga", "requests": ["examples:1"], "seeds": [0]}, "non-empty list"),
    ],
)
def test_bad_unlearn_sections_are_refused_before_anything_runs(section, message):
    from dpbench.unlearning.sweep import check_section

    with pytest.raises(DpbenchError, match=message):
        check_section(section)


@pytest.mark.slow
def test_sweep_jobs_put_the_retrain_references_first_and_skip_finished_cells(finished_parent_run):
    from dpbench.unlearning.sweep import jobs

    folder, runs = finished_parent_run
    spec = RunSpec.from_record(load_result(Path(folder) / "result.json")["spec"])
    section = {"methods": ["ga", "noop"], "requests": ["examples:4"], "seeds": [0, 9], "recipe": {"steps": 3}}
    unlearn(make_spec(folder, "noop", "examples:4", seed=0), folder, runs, log=lambda *a: None)  # with its retrain
    first, rest = jobs(section, [spec], runs)
    assert [a[a.index("--seed") + 1] for _, a in first] == ["9"]
    assert all(a[a.index("--method") + 1] == "retrain" for _, a in first)
    assert {(a[a.index("--method") + 1], a[a.index("--seed") + 1]) for _, a in rest} == {
        ("ga", "0"),
        ("ga", "9"),
        ("noop", "9"),
    }


def test_a_yaml_learning_rate_reads_as_the_command_line_s():
    from dpbench.unlearning.sweep import check_section

    section = check_section({"methods": ["ga"], "requests": ["examples:1"], "seeds": [0], "recipe": {"lr": "1e-4"}})
    assert section["recipe"]["lr"] == 1e-4 and isinstance(section["recipe"]["lr"], float)


@pytest.mark.slow
def test_commands_that_want_a_run_result_refuse_an_unlearning_one(finished_parent_run, capsys, run_cli):
    folder, runs = finished_parent_run
    result = unlearn(make_spec(folder, "noop", "examples:4", seed=0), folder, runs, log=lambda *a: None)
    unlearned = RunFolder.of(runs, result["run_id"]).path
    assert run_cli("audit", str(unlearned)) == 2
    err = capsys.readouterr().err.strip()
    assert "an unlearning run's result, not a run's result" in err and len(err.splitlines()) == 1
    assert run_cli("unlearn", str(unlearned), "--method", "ga", "--forget", "examples:1") == 2
    assert "not a run's result" in capsys.readouterr().err


def test_a_bench_output_among_the_results_is_one_error_line(tmp_path):
    import json

    from dpbench.leaderboard.collect import collect

    bench = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("bench-*.json"))[0]
    (tmp_path / "b.json").write_text(bench.read_text())
    loaded = collect([tmp_path])
    assert not loaded.results and len(loaded.errors) == 1 and "belongs under benchmarks/" in loaded.errors[0]
    assert json.loads(bench.read_text())["kind"] == "dpbench-bench"

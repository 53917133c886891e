"""Bad input: one clear line on stderr, exit code 2, no traceback and no result file."""

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from dpbench.files import LIMIT_ENV
from dpbench.methods.base import METHODS
from dpbench.methods.nonprivate import NonPrivate
from dpbench.training_loop import TrainingLoop


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def dpbench(capsys, monkeypatch, run_cli):
    """Run the CLI in-process (as the console script does) and capture what it prints."""

    def call(*args, cwd):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = run_cli(*args)
        out = capsys.readouterr()
        return Outcome(code, out.out, out.err)

    return call


def assert_one_line_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--method", "dpsdg"], "Did you mean dpsgd"),
        (["--task", "sciencqa"], "Did you mean scienceqa"),
        (["--model", "tiny-lava"], "unknown model"),
        (["--epsilon", "0"], "epsilon must be a positive"),
        (["--epsilon", "-3"], "epsilon must be a positive"),
        (["--delta", "1.5"], "delta must lie in"),
        (["--option", "nonsense"], "KEY=VALUE"),
        (["--option", "bogus=1"], "has no option"),
        (
            ["--method", "dualpriv", "--token-pruning", "keep_ratio=abc"],
            "keep_ratio must be a number in (0, 1], got 'abc'",
        ),
        (["--method", "dualpriv", "--token-pruning", "zip"], "unknown token-pruning strategy"),
        (["--method", "dualpriv", "--option", "keep_ratio=0.5"], "token pruning is part of the run spec"),
        (["--method", "dualpriv", "--token-pruning", "keep_ratio=["], "cannot read the value of 'keep_ratio'"),
        (["--method", "dualpriv", "--token-pruning", "merge,bogus=1"], "--token-pruning takes STRATEGY"),
        (["--method", "dpsgd", "--token-pruning", "keep_ratio=0.5"], "names no strategy"),  # not silently off
        (["--token-pruning", "none,keep_ratio=0.5"], "'none' keeps every visual token"),
        (["--method", "dualpriv", "--option", "update_keep=abc"], "update_keep must be a number in (0, 1], got 'abc'"),
        (["--attacks", "loss,lirra"], "unknown attack"),
        (["--data-dir", "/nonexistent/sqa"], "does not exist"),
        # numbers the libraries cannot take: torch seeds below 2**64, numpy's at least 0
        (["--seed", "18446744073709551616"], "training.seed must lie in 0 .. 2**63 - 1"),
        (["--seed", "-1"], "training.seed must lie in 0 .. 2**63 - 1"),
        (["--steps", "9223372036854775808"], "training.steps must be below 2**31"),
        (["--lr", "inf"], "training.lr must be a finite number"),
        (["--option", "secure_rng=.nan"], "NaN is not a number JSON can hold"),
        (["--option", "clipping=" + "[" * 5000], "cannot read the value of 'clipping'"),
        (["--config", "/dev/zero"], "/dev/zero is not a regular file"),
        (["--config", "/dev/urandom"], "/dev/urandom is not a regular file"),
    ],
)
def test_bad_run_input(tmp_path, args, fragment, dpbench):
    proc = dpbench("run", *args, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert_one_line_error(proc, fragment)
    assert not list(tmp_path.glob("runs/*/result.json"))


def test_corrupt_data_and_unreadable_image(tmp_path, write_layout_a, dpbench):
    root = write_layout_a(tmp_path / "sqa")
    (root / "images" / "train" / "1" / "image.png").write_bytes(b"not a png")
    assert_one_line_error(dpbench("run", "--data-dir", str(root), cwd=tmp_path), "unreadable image")
    (root / "problems.json").write_text("{")
    assert_one_line_error(dpbench("run", "--data-dir", str(root), cwd=tmp_path), "not valid JSON")


def test_delta_above_one_over_n_is_rejected_once_n_is_known(tmp_path, dpbench):
    proc = dpbench("run", "--delta", "0.01", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert_one_line_error(proc, "training examples")  # 0.01 > 1/n for the embedded sample
    assert not (tmp_path / "runs").exists()


def test_validate_lists_every_error_with_its_path(tmp_path, dpbench):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema_version": 1, "run_id": "x y", "audit": None}))
    proc = dpbench("validate", str(bad), cwd=tmp_path)
    assert proc.returncode == 1
    assert "$.run_id" in proc.stderr and "'spec' is a required property" in proc.stderr
    (tmp_path / "junk.json").write_text("{")
    proc = dpbench("validate", str(tmp_path / "junk.json"), cwd=tmp_path)
    assert proc.returncode == 1 and "not valid JSON" in proc.stderr and "Traceback" not in proc.stderr


def test_files_that_are_not_utf8_are_one_line(tmp_path, dpbench):
    """A spec file, a sweep file or a result that is not UTF-8 text: one line, no traceback."""
    (tmp_path / "spec.yaml").write_bytes(b"method: \xff\n")
    assert_one_line_error(dpbench("run", "--config", "spec.yaml", cwd=tmp_path), "is not UTF-8 text")
    assert_one_line_error(dpbench("sweep", "spec.yaml", cwd=tmp_path), "is not UTF-8 text")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "r.json").write_bytes(b"\xff\xfe{")
    proc = dpbench("validate", str(tmp_path / "results" / "r.json"), cwd=tmp_path)
    assert proc.returncode == 1 and "is not UTF-8 text" in proc.stderr and "Traceback" not in proc.stderr
    proc = dpbench("leaderboard", "--results", "results", "--out", "out", "--check", cwd=tmp_path)
    assert proc.returncode == 1 and "is not UTF-8 text" in proc.stderr and not (tmp_path / "out").exists()


def test_validate_checks_bench_outputs_against_the_bench_schema(tmp_path, dpbench):
    fixture = Path(__file__).parent / "fixtures" / "bench" / "bench-scienceqa-tiny-llava-cpu.json"
    proc = dpbench("validate", str(fixture), cwd=tmp_path)
    assert proc.returncode == 0 and "valid" in proc.stdout
    bench = json.loads(fixture.read_text())
    bench["cases"][0]["throughput_ratio"] = "fast"
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    proc = dpbench("validate", str(tmp_path / "bench.json"), cwd=tmp_path)
    assert proc.returncode == 1 and "$.cases[0].throughput_ratio: 'fast' is not of type" in proc.stderr


def test_list_shows_registered_names(tmp_path, dpbench):
    proc = dpbench("list", "methods", cwd=tmp_path)
    assert proc.returncode == 0 and "dpsgd" in proc.stdout and "nonprivate" in proc.stdout
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    for name in ("nonprivate", "dpsgd"):  # each method's own default learning rate
        assert f"lr {METHODS.get(name).default_lr:g} " in lines[name]
    assert "lr: option" in lines["dpzo"]


# -- files that are not ordinary files, or pathological ------------------------------------------
def test_specs_that_are_not_regular_files_are_one_line(tmp_path, dpbench):
    os.mkfifo(tmp_path / "fifo.yaml")  # read, it would wait for a writer for ever
    assert_one_line_error(dpbench("run", "--config", "fifo.yaml", cwd=tmp_path), "fifo.yaml is not a regular file")
    assert_one_line_error(dpbench("sweep", "fifo.yaml", cwd=tmp_path), "fifo.yaml is not a regular file")
    assert_one_line_error(dpbench("sweep", "/dev/zero", cwd=tmp_path), "/dev/zero is not a regular file")
    proc = dpbench("validate", ".", cwd=tmp_path)  # a folder (run and sweep: click refuses it)
    assert proc.returncode == 1 and proc.stderr.strip() == ". is not a regular file"
    assert not (tmp_path / "runs").exists()


def test_a_spec_over_the_size_cap_names_the_variable(tmp_path, dpbench, monkeypatch):
    (tmp_path / "spec.yaml").write_text("method: dpsgd\n" + "#" * 200)
    monkeypatch.setenv(LIMIT_ENV, "100")
    assert_one_line_error(dpbench("run", "--config", "spec.yaml", cwd=tmp_path), LIMIT_ENV)


def test_deeply_nested_or_nan_results_are_one_line_in_validate(tmp_path, dpbench):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "deep.yaml").write_text("[" * 100_000 + "]" * 100_000)
    result = json.loads(next((Path(__file__).parent / "fixtures" / "results").glob("*.json")).read_text())
    result["utility"]["metrics"]["accuracy"] = math.nan
    (tmp_path / "nan.json").write_text(json.dumps(result))  # Python writes the NaN literal JSON has not
    for name, fragment in (
        ("deep.json", "deep.json: $: nested deeper than 64 levels"),
        ("nan.json", "nan.json: $.utility.metrics.accuracy: NaN is not a number JSON can hold"),
    ):
        proc = dpbench("validate", name, cwd=tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and fragment in proc.stderr
    assert_one_line_error(dpbench("run", "--config", "deep.yaml", cwd=tmp_path), "nested deeper than 64 levels")


def test_the_leaderboard_refuses_a_nan_result_and_renders_nothing(tmp_path, dpbench):
    fixture = next((Path(__file__).parent / "fixtures" / "results").glob("*.json"))
    result = json.loads(fixture.read_text())
    result["utility"]["metrics"]["accuracy"] = math.nan
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / fixture.name).write_text(json.dumps(result))
    proc = dpbench("leaderboard", "--results", "results", "--out", "board", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    problems = [line.strip() for line in proc.stderr.splitlines()[1:]]
    assert problems == [f"results/{fixture.name}: $.utility.metrics.accuracy: NaN is not a number JSON can hold: "
                        "dpbench refuses NaN and ±Infinity"]  # fmt: skip
    assert not (tmp_path / "board").exists()


# -- runs folders that cannot be made or written -------------------------------------------------
def test_a_runs_folder_under_a_file_is_one_line_before_anything_slow(tmp_path, dpbench):
    (tmp_path / "afile").write_text("")
    proc = dpbench("run", "--runs-dir", "afile/runs", cwd=tmp_path)
    assert_one_line_error(proc, "cannot create the runs folder afile/runs: afile exists and is not a folder")
    assert "Notice" not in proc.stdout  # refused before the data loaded
    sweep = Path(__file__).parents[1] / "sweeps" / "default.yaml"
    assert_one_line_error(dpbench("sweep", str(sweep), "--runs-dir", "afile/runs", cwd=tmp_path), "afile exists")


def test_a_read_only_runs_folder_is_one_line(tmp_path, dpbench, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: what an unprivileged user would be told
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == Path("locked") else real(p, mode))
    proc = dpbench("run", "--runs-dir", "locked/runs", cwd=tmp_path)
    assert_one_line_error(proc, "cannot create the runs folder locked/runs: locked is not writable")
    assert not (locked / "runs").exists()


# -- a run that diverges -------------------------------------------------------------------------
def test_a_diverged_run_stops_with_a_failure_record_naming_the_step(tmp_path, dpbench, monkeypatch):
    def diverging(self, model, data, spec, delta):  # what a run whose loss turns NaN at step 3 does
        loop = TrainingLoop(spec.training.seed)
        with loop.running("training (non-private)", spec.training.steps):
            for loss in (2.0, 1.5, math.nan, 1.0):
                loop.end_step(loss)

    monkeypatch.setattr(NonPrivate, "train", diverging)
    proc = dpbench("run", "--method", "nonprivate", "--no-audit", "--runs-dir", "runs", cwd=tmp_path)
    assert_one_line_error(proc, "training diverged at step 3 of training (non-private): the loss is nan")
    (folder,) = (tmp_path / "runs").iterdir()
    assert not (folder / "result.json").exists()
    failure = json.loads((folder / "failure.json").read_text())
    assert failure["phase"] == "train" and "step 3" in failure["message"]

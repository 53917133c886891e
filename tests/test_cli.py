"""Bad input: one clear line on stderr, exit code 2, no traceback and no result file."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from dpbench.cli import main
from dpbench.methods.base import METHODS


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def dpbench(capsys, monkeypatch):
    """Run the CLI in-process (as the console script does) and capture what it prints."""

    def call(*args, cwd):
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(list(args))
        out = capsys.readouterr()
        return Outcome(info.value.code, out.out, out.err)

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

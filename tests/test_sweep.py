"""Sweep: grid expansion, one process per run, and resuming exactly the missing or changed runs."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from dpbench import sweep
from dpbench.errors import DpbenchError
from dpbench.run_folder import RunFolder
from dpbench.schemas import write_result
from dpbench.spec import AUDIT_CANARIES, RunSpec, load_spec_file
from dpbench.sweep import expand, is_done, result_path, run_sweep, sweep_command

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "results" / "scienceqa-dpsgd-eps3-tiny-llava-s0-9d29bea0e58e.json"
GRID = {
    "base": {"training": {"steps": 20}},
    "tasks": ["scienceqa"],
    "methods": ["nonprivate", "dpsgd", {"name": "dualpriv", "options": {"keep_ratio": 0.1}}],
    "epsilons": [1, 8],
    "seeds": [0],
}  # 1 + 2 + 2 = 5 runs


class FakeRun:
    """Stands in for `python -m dpbench.cli run`: checks the command line, writes a valid result.

    `crash_on` lists call numbers (1-based) that die instead, leaving a half-written file.
    """

    def __init__(self, crash_on: tuple[int, ...] = ()):
        self.crash_on = crash_on
        self.calls: list[str] = []

    def __call__(self, argv: list[str]) -> int:
        assert argv[:5] == [sys.executable, "-m", "dpbench.cli", "run", "--config"] and argv[6] == "--runs-dir"
        spec = RunSpec.from_dict(yaml.safe_load(Path(argv[5]).read_text()))
        self.calls.append(spec.run_id())
        path = Path(argv[7]) / spec.run_id() / "result.json"
        if len(self.calls) in self.crash_on:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text('{"schema_version": 1, "spec": ')
            return 1
        result = json.loads(FIXTURE.read_text())
        result.update(run_id=spec.run_id(), spec=spec.to_dict())
        write_result(path, result)
        return 0


def run_folders(runs: Path) -> list[str]:
    return sorted(p.name for p in runs.iterdir())


def test_grid_expands_nonprivate_once_per_seed_and_merges_base():
    specs = expand(GRID)
    assert [(s.method, s.privacy.epsilon) for s in specs] == [
        ("nonprivate", None),
        ("dpsgd", 1.0),
        ("dpsgd", 8.0),
        ("dualpriv", 1.0),
        ("dualpriv", 8.0),
    ]
    assert all(s.training.steps == 20 for s in specs)
    assert specs[3].method_options == {} and specs[1].method_options == {}
    assert (specs[3].token_pruning.strategy, specs[3].token_pruning.keep_ratio) == ("random", 0.1)
    assert not specs[1].token_pruning.enabled
    assert len({s.run_id() for s in specs}) == 5


def test_default_sweep_file():
    """The audited comparison: every DP method at ε 1 and 8 over three seeds, both one-run audits."""
    specs = expand(load_spec_file(REPO / "sweeps" / "default.yaml"))
    private = {"dpsgd", "dpzo", "dualpriv", "dualpriv-token", "dualpriv-update"}
    assert len(specs) == 3 + len(private) * 2 * 3
    assert {s.method for s in specs} == {"nonprivate"} | private
    assert {s.privacy.epsilon for s in specs if s.method != "nonprivate"} == {1.0, 8.0}
    assert {s.training.seed for s in specs} == {0, 1, 2}
    # the white-box audit at each method's default: on the audit block for the gradient methods, none for dpzo
    assert {(s.method == "dpzo", s.audit.gradient_canaries, s.audit.canaries, s.audit.canary_kind) for s in specs} == {
        (False, AUDIT_CANARIES, 200, "memorable"),
        (True, 0, 200, "memorable"),
    }


def test_utility_sweep_file():
    specs = expand(load_spec_file(REPO / "sweeps" / "utility.yaml"))
    assert len(specs) == 2 + 3 * 3 * 2
    assert {s.method for s in specs} == {"nonprivate", "dpsgd", "dpzo", "dualpriv"}
    assert {s.privacy.epsilon for s in specs if s.method != "nonprivate"} == {1.0, 3.0, 8.0}
    assert {(s.task, s.model, s.training.seed in (0, 1)) for s in specs} == {("scienceqa", "tiny-llava", True)}
    # no black-box canaries; the white-box ones sit on the audit block, so training is as without them
    assert {(s.method == "dpzo", s.audit.gradient_canaries, s.audit.canaries) for s in specs} == {
        (False, AUDIT_CANARIES, 0),
        (True, 0, 0),
    }


@pytest.mark.parametrize(
    "grid, message",
    [
        ({**GRID, "epsilon": [1]}, "unknown key"),
        ({k: v for k, v in GRID.items() if k != "seeds"}, "missing key"),
        ({**GRID, "methods": [{"name": "dpsgd", "opts": {}}]}, "method entry"),
        ({**GRID, "epsilons": ["high"]}, "epsilons"),
        ({**GRID, "seeds": []}, "non-empty list"),
        ({**GRID, "base": {"privacy": {"accountant": "nope"}}}, "accountant"),
    ],
)
def test_bad_grids_are_rejected_before_anything_runs(grid, message):
    with pytest.raises(DpbenchError, match=message):
        expand(grid)


def test_crashed_sweep_resumes_only_the_missing_run(tmp_path):
    specs, runs = expand(GRID), tmp_path / "runs"
    first = FakeRun(crash_on=(2,))
    summary = run_sweep(specs, runs, runner=first)
    assert len(summary.ran) == 4 and summary.failed == [f"{specs[1].run_id()}: exit status 1"]
    assert not is_done(runs, specs[1])  # the half-written file does not count as done

    second = FakeRun()
    summary = run_sweep(specs, runs, runner=second)
    assert second.calls == [specs[1].run_id()]
    assert (len(summary.ran), len(summary.skipped), summary.failed) == (1, 4, [])
    assert run_folders(runs) == sorted(s.run_id() for s in specs)
    assert all(is_done(runs, s) for s in specs)

    third = FakeRun()
    assert len(run_sweep(specs, runs, runner=third).skipped) == 5 and third.calls == []


def test_a_run_folder_whose_spec_differs_is_rerun(tmp_path):
    specs, runs = expand(GRID), tmp_path / "runs"
    run_sweep(specs, runs, runner=FakeRun())
    path = result_path(runs, specs[2])
    result = json.loads(path.read_text())
    changed = copy.deepcopy(result)
    changed["spec"]["training"]["steps"] = 999  # still schema-valid, but not this sweep's run
    path.write_text(json.dumps(changed))
    rerun = FakeRun()
    summary = run_sweep(specs, runs, runner=rerun)
    assert rerun.calls == [specs[2].run_id()] and len(summary.skipped) == 4
    assert json.loads(path.read_text())["spec"] == result["spec"]


def test_schema_invalid_result_is_rerun(tmp_path):
    specs, runs = expand(GRID), tmp_path / "runs"
    run_sweep(specs, runs, runner=FakeRun())
    path = result_path(runs, specs[0])
    result = json.loads(path.read_text())
    del result["systems"]
    path.write_text(json.dumps(result))
    rerun = FakeRun()
    run_sweep(specs, runs, runner=rerun)
    assert rerun.calls == [specs[0].run_id()]


def test_success_without_a_result_counts_as_failed(tmp_path):
    summary = run_sweep(expand(GRID)[:1], tmp_path / "runs", runner=lambda argv: 0)
    assert summary.ran == [] and "left no valid result" in summary.failed[0]


def test_cli_dry_run_runs_nothing_and_failures_exit_1(tmp_path, monkeypatch):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump(GRID))
    runs = tmp_path / "runs"
    fake = FakeRun(crash_on=(1,))
    monkeypatch.setattr(sweep, "subprocess_runner", fake)

    result = CliRunner().invoke(sweep_command, [str(grid_file), "--runs-dir", str(runs), "--dry-run"])
    assert result.exit_code == 0 and fake.calls == [] and "5 to run" in result.output

    result = CliRunner().invoke(sweep_command, [str(grid_file), "--runs-dir", str(runs)])
    assert result.exit_code == 1 and len(fake.calls) == 5
    assert "4 ran, 0 skipped (done or running elsewhere), 1 failed" in result.output and "failed: " in result.output


def test_a_failed_run_is_reported_with_its_failure_record(tmp_path):
    spec = expand(GRID)[0]
    folder = RunFolder.of(tmp_path, spec.run_id()).create()

    def crash(argv):
        folder.failure.write_text(json.dumps({"phase": "train", "error": "RuntimeError", "message": "boom"}))
        return 1

    summary = run_sweep([spec], tmp_path, runner=crash)
    assert summary.failed == [f"{spec.run_id()}: failed in train: boom (exit status 1)"]

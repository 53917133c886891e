"""No finished training is lost and nothing half-done looks finished: failure records, a lock
per run, a run killed with SIGKILL, and a result write that fails."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dpbench import files, phases, runner
from dpbench.errors import RunBusy
from dpbench.run_folder import RunFolder
from dpbench.spec import RunSpec
from dpbench.sweep import is_done, run_sweep


def small_spec(checkpoint, **changes) -> RunSpec:
    base = {"training.steps": 2, "training.batch_size": 8, "training.n_train": 24, "eval_limit": 4, "attacks": []}
    return RunSpec(method="dpsgd", model=str(checkpoint)).replace(**{**base, **changes})


def test_the_run_lock_and_the_failure_record_hold_without_training(tmp_path):
    """The runner's two guards on their own, in the fast suite (the slow tests below train a run
    through them): a second holder of a run's lock is refused until the first lets go, and a
    failure leaves its phase, the error's name and its first line, removed by the next attempt."""
    spec = RunSpec(method="dpsgd")
    folder = RunFolder.of(tmp_path, spec.run_id()).create()
    with runner.holding(folder, spec, if_not_done=False):
        with pytest.raises(RunBusy, match="running in another process"):
            with runner.holding(folder, spec, if_not_done=False):
                pass
    with runner.holding(folder, spec, if_not_done=False):  # released at exit
        pass
    with pytest.raises(RuntimeError), runner.failure_recorded(folder) as phase:
        phase("evaluate")
        raise RuntimeError("evaluation exploded\nsecond line")
    assert json.loads(folder.failure.read_text()) == {
        "phase": "evaluate",
        "error": "RuntimeError",
        "message": "evaluation exploded",
    }
    with runner.failure_recorded(folder):
        assert not folder.failure.exists()  # a new attempt starts without the old record
    assert not folder.failure.exists() and not folder.result.exists()


@pytest.mark.slow
def test_a_failure_after_the_start_leaves_a_record_and_no_result(checkpoint, tmp_path, monkeypatch):
    spec = small_spec(checkpoint)
    folder = RunFolder.of(tmp_path, spec.run_id())

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation exploded\nsecond line")

    with monkeypatch.context() as m:
        m.setattr(phases, "evaluate", broken)
        with pytest.raises(RuntimeError):
            runner.run(spec, tmp_path, log=lambda _: None)
    assert not folder.result.exists()
    assert json.loads(folder.failure.read_text()) == {
        "phase": "evaluate",
        "error": "RuntimeError",
        "message": "evaluation exploded",
    }
    runner.run(spec, tmp_path, log=lambda _: None)  # a re-run replaces the record
    assert folder.result.exists() and not folder.failure.exists() and is_done(tmp_path, spec)


@pytest.mark.slow
def test_a_failed_rewrite_leaves_the_finished_result_intact(checkpoint, tmp_path, monkeypatch):
    spec = small_spec(checkpoint)
    folder = RunFolder.of(tmp_path, spec.run_id())
    runner.run(spec, tmp_path, log=lambda _: None)
    before = folder.result.read_bytes()

    real_replace = os.replace

    def disk_full_for_results(src, dst):
        if str(dst).endswith("result.json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", disk_full_for_results)
    with pytest.raises(OSError):
        runner.run(spec, tmp_path, log=lambda _: None)
    monkeypatch.undo()
    assert folder.result.read_bytes() == before  # the earlier result, byte for byte
    assert not [p for p in folder.path.iterdir() if p.name.endswith(".tmp")]  # no half-written file left
    assert json.loads(folder.failure.read_text())["phase"] == "record"


@pytest.mark.slow
def test_a_run_held_by_another_process_is_refused_and_a_sweep_skips_it(checkpoint, tmp_path):
    spec = small_spec(checkpoint)
    folder = RunFolder.of(tmp_path, spec.run_id()).create()
    with open(folder.lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunBusy, match="running in another process"):
            runner.run(spec, tmp_path, log=lambda _: None)
    assert not folder.result.exists() and not folder.failure.exists()
    summary = run_sweep([spec], tmp_path, runner=lambda argv: RunBusy.exit_code)
    assert summary.skipped == [spec.run_id()] and summary.failed == [] and summary.ran == []
    runner.run(spec, tmp_path, log=lambda _: None)  # the lock is free again
    with pytest.raises(RunBusy, match="finished by another process"):
        runner.run(spec, tmp_path, if_not_done=True, log=lambda _: None)


@pytest.mark.slow
def test_two_sweeps_on_one_folder_never_run_a_run_twice(checkpoint, tmp_path):
    """The second sweep reaches the run while the first holds it: it skips, not repeats."""
    spec = small_spec(checkpoint)
    calls = []

    def first(argv):
        calls.append("first")
        inner = run_sweep([spec], tmp_path, runner=lambda argv: (calls.append("second"), RunBusy.exit_code)[1])
        assert inner.skipped == [spec.run_id()]
        runner.run(spec, tmp_path, log=lambda _: None)
        return 0

    assert run_sweep([spec], tmp_path, runner=first).ran == [spec.run_id()]
    assert calls == ["first", "second"] and is_done(tmp_path, spec)


@pytest.mark.slow
def test_a_run_killed_during_training_leaves_no_result_and_is_rerun(checkpoint, tmp_path):
    # long enough to be killed mid-training; the default canaries would exceed what the auditor may keep at 5000 steps
    spec = small_spec(checkpoint, **{"training.steps": 5000, "audit.gradient_canaries": 10_000})
    folder = RunFolder.of(tmp_path, spec.run_id())
    config = tmp_path / "spec.yaml"
    config.write_text(json.dumps(spec.to_dict()))
    cmd = [sys.executable, "-m", "dpbench.cli", "run", "--config", str(config), "--runs-dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not folder.spec.exists() and time.monotonic() < deadline:  # written as training starts
            time.sleep(0.2)
        time.sleep(2.0)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not folder.result.exists() and not is_done(tmp_path, spec)  # the next sweep runs it again
    assert run_sweep([spec], tmp_path, dry_run=True).planned == [spec.run_id()]
    with open(folder.lock, "w") as lock:  # the kernel released the dead process's lock
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

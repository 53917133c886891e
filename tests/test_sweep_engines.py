"""`dpbench sweep --engine ray` (a local Ray instance, 2 CPUs, no dashboard or usage statistics)
and `--engine slurm` through submitit's local executor: the local engine's run ids and results;
a failed run does not stop the others; a Ray sweep killed mid-way and resumed loses and
duplicates nothing."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import ray  # the test extra installs ray and submitit: these tests may not skip
import yaml

from dpbench.errors import DpbenchError
from dpbench.schemas import validation_errors
from dpbench.sweep import engine_options, expand, run_sweep
from dpbench.sweep_engines import EngineOptions, Resources, run_jobs, slurm_parameters

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


def grid(checkpoint, seeds=(0, 1)) -> dict:
    return {
        "base": {
            "model": str(checkpoint),
            "training": {"steps": 2, "batch_size": 8, "n_train": 24},
            "eval_limit": 4,
            "attacks": [],
            "audit": {"references": 0},
        },
        "tasks": ["scienceqa"],
        "methods": ["dpsgd"],
        "epsilons": [8],
        "seeds": list(seeds),
        "resources": {"cpus": 1},
    }


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def results(runs):
    out = {}
    for f in sorted(runs.glob("*/result.json")):
        r = json.loads(f.read_text())
        assert validation_errors(r) == []
        out[r["run_id"]] = r
    return out


def same_runs(a: dict, b: dict) -> bool:
    keys = ("privacy", "utility")
    return a.keys() == b.keys() and all(
        all(a[i][k] == b[i][k] for k in keys) and a[i]["training"]["loss_curve"] == b[i]["training"]["loss_curve"]
        for i in a
    )


@pytest.mark.slow
def test_ray_and_slurm_engines_give_the_local_engines_runs(checkpoint, tmp_path, local_ray):
    specs = expand(grid(checkpoint))
    by_engine = {}
    for engine in ("local", "ray", "slurm"):
        runs = tmp_path / engine
        options = engine_options(grid(checkpoint), None, "local")
        summary = run_sweep(specs, runs, engine=engine, options=options)
        assert (len(summary.ran), len(summary.failed)) == (2, 0), summary.failed
        by_engine[engine] = results(runs)
        again = run_sweep(specs, runs, engine=engine, options=options)  # resume: all done
        assert len(again.skipped) == 2 and not again.ran
    assert set(by_engine["local"]) == {s.run_id() for s in specs}
    assert same_runs(by_engine["local"], by_engine["ray"]) and same_runs(by_engine["local"], by_engine["slurm"])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "slurm"])
def test_a_failed_run_does_not_stop_the_others(engine, tmp_path, local_ray):
    jobs = [("bad", ["run", "--method", "no-such-method"]), ("good", ["--version"])]
    options = EngineOptions(cluster="local", folder=tmp_path / "submitit")
    outcomes = run_jobs(engine, jobs, options, lambda _: None)
    assert [o.status for o in outcomes] == [2, 0]


@pytest.mark.slow
def test_a_killed_ray_sweep_resumes_without_losing_or_repeating_a_run(checkpoint, tmp_path):
    file = tmp_path / "sweep.yaml"
    file.write_text(yaml.safe_dump(grid(checkpoint, seeds=(0, 1, 2, 3))))
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "dpbench.cli", "sweep", str(file), "--engine", "ray", "--runs-dir", str(runs)]
    sweep = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not list(runs.glob("*/result.json")) and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(sweep.pid, signal.SIGKILL)  # the driver, its Ray instance and the runs in flight
    sweep.wait()
    # a run in flight dies when its Ray worker does, which can take a moment after the kill (one may even finish):
    # the state to resume from is the one once no process holds a run's lock
    deadline = time.time() + 120
    while any(held(lock) for lock in runs.glob("*/.lock")) and time.time() < deadline:
        time.sleep(0.5)
    finished = {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in runs.glob("*/result.json")}
    assert 1 <= len(finished) < 4
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{4 - len(finished)} ran, {len(finished)} skipped" in resumed.stdout
    assert len(results(runs)) == 4  # nothing lost
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in finished} == finished  # nothing run twice


def held(lock) -> bool:
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


@pytest.mark.parametrize(
    "resources, slurm, message",
    [
        ({"cpus": 0}, None, "resources.cpus"),
        ({"gpus": -1}, None, "resources.gpus"),
        ({"tpus": 1}, None, "resources"),
        (None, {"partition": "gpu", "walltime": 3}, "unknown key"),
        (None, {"time_min": "1h"}, "slurm.time_min"),
        (None, [1], "mapping"),
    ],
)
def test_bad_engine_settings_are_refused_before_anything_runs(resources, slurm, message):
    with pytest.raises(DpbenchError, match=message):
        slurm_parameters(slurm, Resources.from_value(resources))


@pytest.mark.parametrize("address, message", [("127.0.0.1:1", "no Ray cluster answers"), ("nonsense", "host:port")])
def test_an_unreachable_ray_address_is_one_line_at_once(address, message):
    from dpbench.sweep_engines import check_reachable

    with pytest.raises(DpbenchError, match=message):
        check_reachable(address)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("srun") is not None, reason="a Slurm cluster is here: it would submit")
def test_slurm_without_a_cluster_is_one_line_before_anything_runs(tmp_path):
    with pytest.raises(DpbenchError, match="could not submit the job array.*--cluster local"):
        run_jobs("slurm", [("a", ["--version"])], EngineOptions(folder=tmp_path), lambda _: None)

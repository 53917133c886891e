"""Where a sweep's runs execute: one process after another here (`local`), as Ray tasks on a
local or existing Ray cluster (`ray`), or as a Slurm job array through submitit (`slurm`).

Every engine runs the same command, `dpbench run --config SPEC --if-not-done`, so the run id,
the result, the lock that keeps a run to one process, and the resume rule (a run is done only
when its valid result exists) are the local engine's. An engine returns each run's exit
status; a run that could not even start (a lost node, a cancelled job) gets ENGINE_FAILURE and
the reason, and never stops the others.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from dpbench.errors import DpbenchError

ENGINES = ("local", "ray", "slurm")
ENGINE_FAILURE = -1  # the engine lost the run: no exit status of its own
CLUSTERS = ("slurm", "local")  # submitit's: a Slurm cluster, or its local executor (tests, one machine)
LOCAL_KEYS = ("timeout_min", "gpus_per_node", "nodes")  # what submitit's local executor accepts of them
# the sweep file's `slurm:` keys -> submitit AutoExecutor parameters
SLURM_KEYS = {
    "partition": "slurm_partition",
    "time_min": "timeout_min",
    "array_parallelism": "slurm_array_parallelism",
    "account": "slurm_account",
    "qos": "slurm_qos",
    "constraint": "slurm_constraint",
    "mem_gb": "mem_gb",
}


@dataclass(frozen=True)
class Resources:
    """What one run asks of its node (the sweep file's `resources:`)."""

    cpus: int = 1
    gpus: int = 0

    @classmethod
    def from_value(cls, value: Any) -> Resources:
        if value is None:
            return cls()
        if not isinstance(value, dict) or set(value) - {"cpus", "gpus"}:
            raise DpbenchError(f"sweep `resources` must be a mapping of cpus and gpus per run, got {value!r}")
        r = cls(**value)
        for name in ("cpus", "gpus"):
            v = getattr(r, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "cpus" else 0):
                raise DpbenchError(
                    f"sweep resources.{name} must be an integer >= {1 if name == 'cpus' else 0}, got {v!r}"
                )
        return r


def slurm_parameters(value: Any, resources: Resources) -> dict[str, Any]:
    """submitit parameters from the sweep file's `slurm:` mapping and the per-run resources."""
    value = value or {}
    if not isinstance(value, dict):
        raise DpbenchError(f"sweep `slurm` must be a mapping ({', '.join(SLURM_KEYS)}), got {value!r}")
    unknown = set(value) - set(SLURM_KEYS)
    if unknown:
        raise DpbenchError(f"sweep `slurm`: unknown key(s) {sorted(unknown)}; known: {', '.join(SLURM_KEYS)}")
    for key in ("time_min", "array_parallelism"):
        v = value.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise DpbenchError(f"sweep slurm.{key} must be a positive integer, got {v!r}")
    params = {SLURM_KEYS[k]: v for k, v in value.items() if v is not None}
    params.setdefault("timeout_min", 240)
    return {**params, "cpus_per_task": resources.cpus, "gpus_per_node": resources.gpus, "nodes": 1}


def run_args(config: Path, runs_dir: str | Path, checkpoint: bool = False) -> list[str]:
    """`dpbench run`'s arguments for one sweep run (the python that runs them is the node's own)."""
    return ["run", "--config", str(config), "--runs-dir", str(runs_dir), "--if-not-done"] + (
        ["--save-checkpoint"] if checkpoint else []
    )


def _die_with_parent() -> None:
    """A run dies when the worker that started it dies (Linux), so a killed sweep leaves no run going on for long."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_process(args: list[str]) -> int:
    """One run in a process of its own, with this node's python; its exit status."""
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    return subprocess.run([sys.executable, "-m", "dpbench.cli", *args], check=False, preexec_fn=preexec).returncode


@dataclass
class Outcome:
    status: int
    reason: str = ""  # why the engine lost it (status ENGINE_FAILURE)


@dataclass
class EngineOptions:
    resources: Resources = field(default_factory=Resources)
    address: str | None = None  # ray: an existing cluster ("auto" or host:port); None starts a local one
    cluster: str = "slurm"  # submitit: slurm or local
    slurm: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None  # submitit's logs and pickles


Launched = Callable[[str], None]  # called with a run id as its run is handed to the engine


def run_local(jobs: list[tuple[str, list[str]]], options: EngineOptions, started: Launched) -> list[Outcome]:
    out = []
    for run_id, args in jobs:
        started(run_id)
        out.append(Outcome(run_process(args)))
    return out


def run_ray(jobs: list[tuple[str, list[str]]], options: EngineOptions, started: Launched) -> list[Outcome]:
    try:
        import ray
    except ImportError:
        raise DpbenchError("--engine ray needs ray: pip install 'dpbench[cluster]'") from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    fresh = not ray.is_initialized()
    if fresh and options.address:
        check_reachable(options.address)
    if fresh:
        init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if options.address:
            init["address"] = options.address
        try:
            ray.init(**init)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise DpbenchError(
                f"cannot reach a Ray cluster at {options.address or 'a new local instance'}: {e}"
            ) from None
    task = ray.remote(run_process).options(
        num_cpus=options.resources.cpus, num_gpus=options.resources.gpus, max_retries=0
    )
    try:
        refs = []
        for run_id, args in jobs:
            refs.append(task.remote(args))
            started(run_id)
        out = []
        for ref in refs:
            try:
                out.append(Outcome(int(ray.get(ref))))
            except ray.exceptions.RayError as e:  # the task's worker or node died
                out.append(Outcome(ENGINE_FAILURE, f"ray lost the run: {str(e).splitlines()[0]}"))
        return out
    finally:
        if fresh:
            ray.shutdown()


def check_reachable(address: str) -> None:
    """A host:port (or ray://host:port) that nothing answers on is one line, not minutes of Ray's retries."""
    if address == "auto":
        return  # Ray reads the local cluster's address file, and says at once when there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise DpbenchError(f"--address must be auto, host:port or ray://host:port, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise DpbenchError(
            f"no Ray cluster answers at {address} ({e}); start one (`ray start --head`) or leave --address "
            "out for a local instance"
        ) from None


def run_slurm(jobs: list[tuple[str, list[str]]], options: EngineOptions, started: Launched) -> list[Outcome]:
    try:
        import submitit
    except ImportError:
        raise DpbenchError("--engine slurm needs submitit: pip install 'dpbench[cluster]'") from None
    if options.cluster not in CLUSTERS:
        raise DpbenchError(f"--cluster must be one of {', '.join(CLUSTERS)}, got {options.cluster!r}")
    params = options.slurm
    if options.cluster == "local":  # the local executor takes a few generic parameters only
        params = {k: v for k, v in params.items() if k in LOCAL_KEYS}
    try:  # submitit's own errors (no srun here, sbatch refused, a bad parameter): one line
        executor = submitit.AutoExecutor(folder=options.folder, cluster=options.cluster)
        executor.update_parameters(name="dpbench-sweep", **params)
        submitted = executor.map_array(run_process, [args for _, args in jobs])  # one job array
    except Exception as e:
        raise DpbenchError(
            f"submitit could not submit the job array: {str(e).strip().splitlines()[0]}"
            + (" (--cluster local runs it on this machine)" if options.cluster == "slurm" else "")
        ) from None
    for run_id, _ in jobs:
        started(run_id)
    out = []
    for job in submitted:
        try:
            out.append(Outcome(int(job.result())))
        except Exception as e:  # the job failed, timed out or was cancelled
            out.append(Outcome(ENGINE_FAILURE, f"job {job.job_id} failed: {str(e).strip().splitlines()[-1]}"))
    return out


RUNNERS: dict[str, Callable[[list[tuple[str, list[str]]], EngineOptions, Launched], list[Outcome]]] = {
    "local": run_local,
    "ray": run_ray,
    "slurm": run_slurm,
}


def check_engine(name: str) -> None:
    if name not in ENGINES:
        raise DpbenchError(f"--engine must be one of {', '.join(ENGINES)}, got {name!r}")


def run_jobs(engine: str, jobs: Iterable[tuple[str, list[str]]], options: EngineOptions, started: Launched):
    check_engine(engine)
    return RUNNERS[engine](list(jobs), options, started)

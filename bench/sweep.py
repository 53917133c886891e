"""`dpbench sweep FILE.yaml`: run a grid of tasks x methods x epsilons x seeds, resumably.

Each run goes to its own process (a crash or a leaked CUDA allocation cannot affect the next),
through the same `dpbench run` a user would type. A run is skipped only when its folder holds a
valid result whose spec equals the spec the sweep would run now, so editing the grid or its
`base:` re-runs exactly the runs it changes.

Example file::

    base: {model: tiny-llava, training: {steps: 150}}
    tasks: [scienceqa]
    methods: [nonprivate, dpsgd, {name: dualpriv, options: {keep_ratio: 0.1}}]
    epsilons: [1, 3, 8]
    seeds: [0, 1]
    resources: {cpus: 2, gpus: 1}                  # per run, for --engine ray and slurm
    slurm: {partition: gpu, time_min: 120, array_parallelism: 8}

`--engine ray` and `--engine slurm` (dpbench.sweep_engines) run the same command per run, so run
ids, results, locks and the resume rule do not depend on the engine.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
import yaml

from dpbench.errors import DpbenchError, RunBusy
from dpbench.run_folder import RunFolder, check_runs_dir
from dpbench.spec import RunSpec, load_spec_file, merge, method_override
from dpbench.sweep_engines import (
    CLUSTERS,
    ENGINE_FAILURE,
    ENGINES,
    EngineOptions,
    Outcome,
    Resources,
    run_args,
    run_jobs,
    slurm_parameters,
)

GRID_KEYS = ("tasks", "methods", "epsilons", "seeds")
# base: run-spec fields every run shares; resources and slurm: what --engine ray / slurm ask per run
OPTIONAL_KEYS = ("base", "resources", "slurm", "unlearn")  # unlearn: dpbench.unlearning.sweep
NON_PRIVATE_METHODS = ("nonprivate",)  # run once per seed; the epsilon axis does not apply

# Runs one command line, returns its exit status. Tests pass a fake; the default spawns a process.
CommandRunner = Callable[[list[str]], int]


def subprocess_runner(argv: list[str]) -> int:
    return subprocess.run(argv, check=False).returncode


def as_list(grid: dict[str, Any], key: str) -> list[Any]:
    value = grid[key]
    if not isinstance(value, list) or not value:
        raise DpbenchError(f"sweep `{key}` must be a non-empty list, got {value!r}")
    return value


def method_entry(entry: Any) -> tuple[str, dict[str, Any]]:
    """A `methods` entry: a name, or {name: ..., options: {...}}."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and isinstance(entry.get("name"), str) and set(entry) <= {"name", "options"}:
        options = entry.get("options") or {}
        if isinstance(options, dict):
            return entry["name"], options
    raise DpbenchError(f"sweep method entry must be a name or {{name: ..., options: {{...}}}}, got {entry!r}")


def expand(grid: dict[str, Any]) -> list[RunSpec]:
    """Every RunSpec of the grid, in file order, each once (all validated before anything runs)."""
    if not isinstance(grid, dict):
        raise DpbenchError("a sweep file must hold a mapping with tasks, methods, epsilons and seeds")
    unknown = set(grid) - {*GRID_KEYS, *OPTIONAL_KEYS}
    missing = [k for k in GRID_KEYS if k not in grid]
    if unknown or missing:
        raise DpbenchError(
            f"sweep file: unknown key(s) {sorted(unknown)}, missing key(s) {missing}; "
            f"expected {', '.join(GRID_KEYS)} and optional {', '.join(OPTIONAL_KEYS)}"
        )
    base = grid.get("base") or {}
    if not isinstance(base, dict):
        raise DpbenchError("sweep `base` must be a mapping of run-spec fields")
    try:  # YAML reads `3` as int; one float keeps run ids equal to a `--epsilon 3` run's
        epsilons = [float(e) for e in as_list(grid, "epsilons")]
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond any float
        raise DpbenchError(f"sweep `epsilons` must be numbers, got {grid['epsilons']!r}") from None
    seeds = as_list(grid, "seeds")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise DpbenchError(f"sweep `seeds` must be integers, got {seeds!r}")
    specs: dict[str, RunSpec] = {}
    for task in as_list(grid, "tasks"):
        for name, options in map(method_entry, as_list(grid, "methods")):
            for eps in [None] if name in NON_PRIVATE_METHODS else epsilons:
                for seed in seeds:
                    override = {
                        "task": task,
                        "privacy": {"epsilon": eps},
                        "training": {"seed": seed},
                        **method_override(name, options),
                    }
                    spec = RunSpec.from_dict(merge(base, override))
                    specs.setdefault(spec.run_id(), spec)
    from dpbench.phases import check_utility_run  # torch loads once the grid itself is sound

    for spec in specs.values():
        check_utility_run(spec)
    return list(specs.values())


def result_path(runs_dir: str | Path, spec: RunSpec) -> Path:
    return RunFolder.of(runs_dir, spec.run_id()).result


def is_done(runs_dir: str | Path, spec: RunSpec, checkpoint: bool = False) -> bool:
    """A valid result for exactly this spec exists (a crash leaves none: results are written
    atomically), with its checkpoint when the sweep unlearns from it."""
    folder = RunFolder.of(runs_dir, spec.run_id())
    return folder.finished(spec) and (not checkpoint or folder.checkpoint.is_dir())


def run_command(config: Path, runs_dir: str | Path, checkpoint: bool = False) -> list[str]:
    return [sys.executable, "-m", "dpbench.cli", *run_args(config, runs_dir, checkpoint)]


def failure_reason(runs_dir: str | Path, run_id: str, status: int) -> str:
    """What the run's failure record says, else its exit status."""
    line = RunFolder.of(runs_dir, run_id).failure_line()
    return f"{line} (exit status {status})" if line else f"exit status {status}"


@dataclass
class SweepSummary:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "run-id: why"
    planned: list[str] = field(default_factory=list)  # dry run: would run

    def line(self) -> str:
        total = len(self.ran) + len(self.skipped) + len(self.failed) + len(self.planned)
        parts = [f"{len(self.ran)} ran", f"{len(self.skipped)} skipped (done or running elsewhere)"]
        parts.append(f"{len(self.failed)} failed")
        if self.planned:
            parts.insert(0, f"{len(self.planned)} to run")
        return f"sweep: {total} run(s): " + ", ".join(parts)


def run_sweep(
    specs: list[RunSpec],
    runs_dir: str | Path,
    *,
    runner: CommandRunner = subprocess_runner,
    dry_run: bool = False,
    echo: Callable[[str], None] = lambda _: None,
    engine: str = "local",
    options: EngineOptions | None = None,
    checkpoint: bool = False,
) -> SweepSummary:
    """Every run not done yet, on `engine`; a failed run never stops the others. `checkpoint`:
    each run saves its model (the parents of an `unlearn:` section)."""
    summary, pending = SweepSummary(), []
    for i, spec in enumerate(specs, 1):
        run_id = spec.run_id()
        prefix = f"[{i}/{len(specs)}] {run_id}"
        if is_done(runs_dir, spec, checkpoint):
            summary.skipped.append(run_id)
            echo(f"{prefix}: done, skipped")
        elif dry_run:
            summary.planned.append(run_id)
            echo(f"{prefix}: would run")
        else:
            pending.append((prefix, spec))
    if engine == "local":
        for prefix, spec in pending:
            echo(f"{prefix}: running")
            with tempfile.TemporaryDirectory(prefix="dpbench-sweep-") as tmp:
                status = runner(run_command(write_config(Path(tmp), spec), runs_dir, checkpoint))
            record_run(summary, runs_dir, spec, Outcome(status), prefix, echo)
    elif pending:
        Path(runs_dir).mkdir(parents=True, exist_ok=True)
        options = options or EngineOptions()
        if options.folder is None:
            options.folder = Path(runs_dir) / ".submitit"
        prefixes = {spec.run_id(): prefix for prefix, spec in pending}
        # in the runs folder: a cluster's nodes see it (a shared file system), not this machine's /tmp
        with tempfile.TemporaryDirectory(dir=runs_dir, prefix=".sweep-") as tmp:
            jobs = [
                (spec.run_id(), run_args(write_config(Path(tmp), spec), runs_dir, checkpoint)) for _, spec in pending
            ]
            outcomes = run_jobs(engine, jobs, options, lambda run_id: echo(f"{prefixes[run_id]}: sent to {engine}"))
        for (prefix, spec), outcome in zip(pending, outcomes):
            record_run(summary, runs_dir, spec, outcome, prefix, echo)
    return summary


def write_config(folder: Path, spec: RunSpec) -> Path:
    config = folder / f"{spec.run_id()}.yaml"
    config.write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
    return config


def record_run(summary: SweepSummary, runs_dir: str | Path, spec: RunSpec, outcome: Outcome, prefix: str, echo) -> None:
    """A grid run's outcome; one that exits 0 is held to having left a valid result for its spec."""

    def unfinished() -> str | None:
        if is_done(runs_dir, spec):
            return None
        return f"exited 0 but left no valid result for this spec at {result_path(runs_dir, spec)}"

    def busy() -> None:
        echo(f"{prefix}: running or done elsewhere, skipped")

    record_outcome(summary, runs_dir, spec.run_id(), outcome, busy=busy, unfinished=unfinished)


def record_outcome(
    summary: SweepSummary,
    runs_dir: str | Path,
    run_id: str,
    outcome: Outcome,
    *,
    busy: Callable[[], None] = lambda: None,
    unfinished: Callable[[], str | None] = lambda: None,
) -> None:
    """One job's outcome into the summary (a grid run's or an `unlearn:` cell's). `busy`: called when
    another sweep holds the run or finished it; `unfinished`: why a job that exited 0 did not finish
    (None: it did)."""
    status = outcome.status
    if status == RunBusy.exit_code:  # another sweep holds it or finished it: never run twice
        summary.skipped.append(run_id)
        busy()
    elif status == ENGINE_FAILURE:
        summary.failed.append(f"{run_id}: {outcome.reason}")
    elif status != 0:
        summary.failed.append(f"{run_id}: {failure_reason(runs_dir, run_id, status)}")
    elif (why := unfinished()) is not None:  # the job claims success: hold it to that
        summary.failed.append(f"{run_id}: {why}")
    else:
        summary.ran.append(run_id)


def engine_options(grid: dict[str, Any], address: str | None, cluster: str) -> EngineOptions:
    """The sweep file's per-run resources and Slurm settings, with the command line's."""
    resources = Resources.from_value(grid.get("resources"))
    return EngineOptions(
        resources=resources, address=address, cluster=cluster, slurm=slurm_parameters(grid.get("slurm"), resources)
    )


@click.command("sweep")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--runs-dir",
    default="runs",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Each run writes <runs-dir>/<run-id>/result.json.",
)
@click.option("--dry-run", is_flag=True, help="List which runs would run and which are done; run nothing.")
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="local: one process after another here; ray: a Ray task per run (the file's `resources:`); "
    "slurm: a Slurm job array through submitit (the file's `resources:` and `slurm:`).",
)
@click.option("--address", help="ray: an existing cluster's address (host:port or auto); without it, a local one.")
@click.option(
    "--cluster",
    type=click.Choice(CLUSTERS),
    default="slurm",
    show_default=True,
    help="slurm: submitit's executor; local runs the same job array on this machine.",
)
def sweep_command(file: str, runs_dir: str, dry_run: bool, engine: str, address: str | None, cluster: str) -> None:
    """Run a grid of tasks x methods x epsilons x seeds from FILE; finished runs are skipped."""
    grid = load_spec_file(file)
    specs = expand(grid)
    from dpbench.unlearning import sweep as unlearning  # its requests load the tasks: only for a section

    unlearn = unlearning.check_section(grid["unlearn"]) if "unlearn" in grid else None
    if not dry_run:
        check_runs_dir(runs_dir)
    options = engine_options(grid, address, cluster)  # checked before anything runs
    summary = run_sweep(
        specs,
        runs_dir,
        runner=subprocess_runner,
        dry_run=dry_run,
        echo=click.echo,
        engine=engine,
        options=options,
        checkpoint=unlearn is not None,
    )
    if unlearn is not None and not dry_run and not summary.failed:
        options.folder = options.folder or Path(runs_dir) / ".submitit"
        for stage in unlearning.jobs(unlearn, specs, runs_dir):  # the retrain references first
            outcomes = run_jobs(engine, stage, options, lambda job: click.echo(f"{job}: running"))
            for (job, _), outcome in zip(stage, outcomes):
                record_outcome(summary, runs_dir, job, outcome)
            if summary.failed:  # the methods need their references
                break
    click.echo(summary.line())
    for failure in summary.failed:
        click.echo(f"  failed: {failure}", err=True)
    if summary.failed:
        raise SystemExit(1)

"""One run, top to bottom, as `dpbench run` does it: check -> prepare -> train (memory measured) ->
evaluate -> zero-shot -> references -> audit -> record -> write. Each phase lives in `dpbench.phases`."""

from __future__ import annotations

import fcntl
import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from dpbench import distributed, phases
from dpbench.errors import DpbenchError, RunBusy
from dpbench.files import write_json_atomic
from dpbench.output import launched_rank
from dpbench.run_folder import RunFolder
from dpbench.run_result import RunResult
from dpbench.schemas import write_result
from dpbench.spec import RunSpec
from dpbench.timing import Walls, part


def run(
    spec: RunSpec,
    runs_dir: Path,
    *,
    audit: bool = True,
    save_checkpoint: bool = False,
    if_not_done: bool = False,
    log=print,
) -> RunResult | None:
    """The run's result; None on a training process other than rank 0 (it only trains)."""
    started = time.perf_counter()
    phases.check_utility_run(spec)
    w = distributed.init(spec.device, spec.training.nproc)
    with Walls(started).opened() as walls:
        try:
            checked = phases.check(spec)  # every input, before any weights load or anything is written
            prepared = phases.prepare(checked, with_base=w.main)  # the base model, read once; the target, its copy
            if not w.main:
                phases.train(prepared)
                return None
            return run_prepared(prepared, runs_dir, started, walls, audit, save_checkpoint, if_not_done, log)
        finally:
            distributed.shutdown()


def run_prepared(prepared, runs_dir, started, walls, audit, save_checkpoint, if_not_done, log) -> RunResult:
    spec = prepared.spec
    folder = RunFolder.of(runs_dir, spec.run_id()).create()
    with (
        holding(folder, spec, skip_done(folder, if_not_done, save_checkpoint), launched_rank()),
        failure_recorded(folder) as phase,
    ):
        write_json_atomic(folder.spec, spec.to_dict())
        log(
            f"run {spec.run_id()}: {spec.method} on {spec.task} ({len(prepared.fit)} training examples, "
            f"{prepared.data.source})"
        )

        walls.lap("prepare", "train")  # wall time per phase and part, in the result
        phase("train")
        trained = phases.train(prepared)
        distributed.shutdown()  # the other ranks are done: what follows (references included) is rank 0's alone
        walls.lap("train", "evaluate")
        phase("evaluate")
        evaluation = phases.evaluate(prepared.task, prepared.model, prepared.scored)
        if save_checkpoint:
            phases.save_checkpoint(prepared, folder)
        walls.lap("evaluate", "zero_shot")

        zero_shot = phases.zero_shot(prepared)
        walls.lap("zero_shot", "audit")
        phase("audit")
        audit_record, scores = None, {}
        if audit:
            with part("references"):
                references = phases.references(prepared, trained.report.epochs, folder, log)  # their losses
            audit_record, scores = phases.audit(prepared, references, folder)
        with part("whitebox"):  # the white-box analysis runs here, on first read
            whitebox = trained.report.whitebox
        audit_record = phases.with_whitebox(audit_record, whitebox)

        phase("record")
        result = phases.record(prepared, trained, evaluation, zero_shot, audit_record)
        with part("report"):
            phases.write_files(folder, result, scores, trained)
        walls.lap("audit")
        result.systems.total_wall_s = time.perf_counter() - started
        result.systems.phases, result.systems.phase_parts = walls.rounded()
        write_result(folder.result, result.to_dict())  # the result last: a result file means a finished run
    return result


def launch(
    spec: RunSpec, runs_dir: Path, *, audit: bool = True, save_checkpoint: bool = False, if_not_done: bool = False
) -> None:
    """`dpbench run --nproc N`: the run under torch's launcher, N processes on this machine. This
    process checks every input first, as one process would (so a bad one is one line, before any
    rank starts or anything is written) but loads no weights, then holds the run's lock while the
    ranks train; rank 0 writes the result and prints it."""
    phases.check_utility_run(spec)
    distributed.check_launch(spec.device, spec.training.nproc)
    phases.check(spec)
    folder = RunFolder.of(runs_dir, spec.run_id()).create()
    with (
        holding(folder, spec, skip_done(folder, if_not_done, save_checkpoint)),
        tempfile.TemporaryDirectory(prefix="dpbench-ranks-") as tmp,
    ):
        config = Path(tmp) / "spec.json"
        config.write_text(json.dumps(spec.to_dict()))
        args = ["--config", str(config), "--runs-dir", str(runs_dir)]
        args += [] if audit else ["--no-audit"]
        args += ["--save-checkpoint"] if save_checkpoint else []
        status = distributed.launch(spec.training.nproc, args)
    if status != 0:
        why = folder.failure_line() or f"a training process failed (exit status {status}); its output above says why"
        raise DpbenchError(f"run {spec.run_id()}: {why}")


def skip_done(folder: RunFolder, if_not_done: bool, save_checkpoint: bool) -> bool:
    """Whether `--if-not-done` skips the run once finished: not when a sweep wants its checkpoint
    (`--save-checkpoint`, the parent of an `unlearn:` section) and the finished run saved none."""
    return if_not_done and (not save_checkpoint or folder.checkpoint.is_dir())


@contextmanager
def holding(folder: RunFolder, spec: RunSpec, if_not_done: bool, held_by_launcher: bool = False) -> Iterator[None]:
    """One process per run: an exclusive lock on the folder's lock file, released at exit (or
    by the kernel when the process dies). With `if_not_done`, a run another process finished
    meanwhile is not run again. Ranks that `launch` started run under its lock."""
    if held_by_launcher:
        yield
        return
    with open(folder.lock, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusy(f"run {spec.run_id()} is running in another process") from None
        if if_not_done and folder.finished(spec):
            raise RunBusy(f"run {spec.run_id()} was finished by another process")
        yield


@contextmanager
def failure_recorded(folder: RunFolder) -> Iterator[Callable[[str], None]]:
    """A failure after the run started leaves `failure.json` (phase, error, message) and no
    result; a new attempt removes the old record first. A finished result is never touched."""
    folder.failure.unlink(missing_ok=True)
    current = ["prepare"]

    def phase(name: str) -> None:
        current[0] = name

    try:
        yield phase
    except BaseException as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        write_json_atomic(folder.failure, {"phase": current[0], "error": type(e).__name__, "message": message})
        raise

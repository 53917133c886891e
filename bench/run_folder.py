"""A run folder, `runs/<run-id>/`: the one place that names its files and says whether the run
finished.

A run is finished when its `result.json` exists and validates: the runner writes it last, and
atomically, so a crash at any earlier point leaves a folder that `finished()` calls unfinished
and a sweep re-runs.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dpbench.errors import DpbenchError
from dpbench.schemas import load_result

if TYPE_CHECKING:
    from dpbench.spec import RunSpec


class _File:
    """A file of the run folder: `folder.result` is `folder.path / "result.json"`."""

    def __init__(self, name: str, doc: str = ""):
        self.name, self.__doc__ = name, doc

    def __get__(self, folder: RunFolder | None, owner: type) -> Path:
        return self if folder is None else folder.path / self.name


@dataclass(frozen=True)
class RunFolder:
    path: Path

    result = _File("result.json", "the finished run's record; written last")
    spec = _File("spec.json", "the run spec, written before training")
    checkpoint = _File("checkpoint", "the fine-tuned model (`--save-checkpoint`)")
    attack_scores = _File("audit_scores.npz", "member and non-member scores of every attack")
    reference_losses = _File("audit_references.npz", "the reference models' losses, reused by re-audits")
    canary_scores = _File("audit_canaries.npz", "the one-run audit's canaries and their scores")
    whitebox_scores = _File("audit_whitebox.npz", "the white-box audit's canary inclusion and scores")
    audit_work = _File(".audit", "scratch space of the attacks (e.g. images for the image attack)")
    failure = _File(
        "failure.json", "why the last attempt failed after it started (phase, message); a re-run replaces it"
    )
    lock = _File(".lock", "held (flock) by the process running it: one process per run")
    report_markdown = _File("audit.md")
    report_html = _File("audit.html")
    report_roc = _File("audit_roc.png")
    report_hist = _File("audit_hist.png")

    @classmethod
    def of(cls, runs_dir: str | Path, run_id: str) -> RunFolder:
        return cls(Path(runs_dir) / run_id)

    def require_checkpoint(self) -> Path:
        if not self.checkpoint.is_dir():
            raise DpbenchError(f"{self.path} has no checkpoint/: rerun it with `dpbench run --save-checkpoint`")
        return self.checkpoint

    def create(self) -> RunFolder:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DpbenchError(f"cannot create run folder {self.path}: {e.strerror}") from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise DpbenchError(f"cannot write in run folder {self.path}: permission denied")
        return self

    def failure_line(self) -> str | None:
        """What the failure record says ("failed in PHASE: MESSAGE"), None without a readable one."""
        try:
            failure = json.loads(self.failure.read_text())
            return f"failed in {failure['phase']}: {failure['message']}"
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def finished(self, spec: RunSpec | None = None) -> bool:
        """A valid result exists (for exactly `spec`, when given): the run is done and a sweep skips it."""
        try:
            result = load_result(self.result)
        except DpbenchError:  # missing, unreadable, not JSON or not a valid result
            return False
        if spec is None:
            return True
        try:  # read back as a spec, so a field added since (at its default) compares equal
            recorded = type(spec).from_record(result["spec"]).to_dict()
        except DpbenchError:
            return False
        # through JSON, so tuples and lists (attacks) compare as the file stores them
        return json.loads(json.dumps(recorded)) == json.loads(json.dumps(spec.to_dict()))


def check_runs_dir(path: str | Path, what: str = "runs folder") -> Path:
    """A folder dpbench can create (or has) and write in, checked before anything slow; nothing
    is created here, so input refused later still leaves nothing behind."""
    path = Path(path)
    for existing in (path, *path.parents):  # the nearest part of it that exists
        try:
            mode = os.stat(existing).st_mode
        except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: a file further up
            continue
        except OSError as e:
            raise DpbenchError(f"cannot use {existing} for the {what} {path}: {e.strerror}") from None
        if not stat.S_ISDIR(mode):
            raise DpbenchError(f"cannot create the {what} {path}: {existing} exists and is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            verb = "write in" if existing == path else "create"
            raise DpbenchError(f"cannot {verb} the {what} {path}: {existing} is not writable (permission denied)")
        return path
    return path

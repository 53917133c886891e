"""Find result files and validate every one, collecting all problems before reporting any.

A leaderboard built from some files while others are silently skipped would misstate the
benchmark, so one bad file fails the whole render (HELM's rule: report every problem with its
location, together).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from dpbench.errors import DpbenchError
from dpbench.files import FileProblem, read_json
from dpbench.schemas import document_kind, validation_errors


@dataclass(frozen=True)
class LoadedResult:
    path: Path
    data: dict[str, Any]


@dataclass
class Collection:
    results: list[LoadedResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # each `file: $.json.path: message`
    duplicates: list[str] = field(default_factory=list)  # files skipped: run_id seen before


def result_files(folder: str | Path) -> list[Path]:
    """`folder/*.json` (committed submissions) and `folder/*/result.json` (run folders), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DpbenchError(f"results folder {folder} does not exist")
    files = set(folder.glob("*.json")) | set(folder.glob("*/result.json"))
    return sorted(files, key=lambda p: p.as_posix())


def display_path(path: Path) -> str:
    """Relative to the working directory when possible: messages and output stay machine-independent."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def collect(folders: Iterable[str | Path]) -> Collection:
    """Load and validate every result file under `folders` (earlier folders win on duplicate run ids)."""
    out = Collection()
    seen_paths: set[Path] = set()
    seen_run_ids: dict[str, str] = {}
    for folder in folders:
        for path in result_files(folder):
            if path.resolve() in seen_paths:
                continue
            seen_paths.add(path.resolve())
            name = display_path(path)
            try:
                data = read_json(path)
            except FileProblem as e:  # not JSON, NaN or ±Infinity, nested too deep: where, and what
                out.errors.append(f"{name}: {e.where}: {e.problem}")
                continue
            except DpbenchError as e:  # unreadable, not a regular file, too large, not UTF-8
                out.errors.append(f"{name}: $: {e}")
                continue
            kind = document_kind(data)
            if kind == "bench":
                out.errors.append(f"{name}: $: a `dpbench bench` output; it belongs under benchmarks/")
                continue
            errors = validation_errors(data, kind)  # a run's or an unlearning run's
            if errors:
                out.errors.extend(f"{name}: {e}" for e in errors)
                continue
            # The same run committed to leaderboard/results and still present in runs/ must
            # count as one seed, not two.
            if data["run_id"] in seen_run_ids:
                out.duplicates.append(f"{name}: run {data['run_id']} already read from {seen_run_ids[data['run_id']]}")
                continue
            seen_run_ids[data["run_id"]] = name
            out.results.append(LoadedResult(path=path, data=data))
    return out

"""The leaderboard's systems section: committed `dpbench bench` outputs, per device type.

Training runs record memory and throughput too, but each run measures one method alone, on
whatever load the machine had then; a `dpbench bench` file measures every method side by side
in one invocation, as ratios to non-private, which is the comparison that survives a change of
machine. Files are validated against `schema/bench.schema.json` like results are against theirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from dpbench.benchmark_report import MIB, device_notes, table
from dpbench.errors import DpbenchError
from dpbench.files import FileProblem, read_json
from dpbench.leaderboard.collect import display_path
from dpbench.schemas import validation_errors

DEFAULT_DIR = Path("benchmarks")


@dataclass(frozen=True)
class Benchmark:
    name: str  # the file, as displayed
    data: dict[str, Any]

    @property
    def device_type(self) -> str:
        return self.data["base"]["device"].split(":")[0]  # cuda:1 -> cuda

    @property
    def title(self) -> str:
        b, t = self.data["base"], self.data["base"]["training"]
        width = f" at language-model width {b['model_hidden_size']}" if b.get("model_hidden_size") else ""
        return (
            f"{b['task']} on {b['model']}{width}: {t['steps']} training steps per measurement, "
            f"{self.data['rounds']} interleaved round(s), medians; {self.data['created'][:10]}"
        )

    def table(self) -> tuple[list[str], list[list[str]]]:
        return table(self.data)

    def notes(self) -> list[str]:
        return device_notes(self.data) + [
            f"EXTRAPOLATED, not measured: {e['label']} at batch {e['batch_size']}, {e['full_layers']} layers, "
            f"{e['device']}: {e['extrapolated_peak_bytes'] / MIB:.0f} MiB (a line through layers "
            f"{', '.join(map(str, e['from_layers']))})"
            + (
                f"; measured at full depth: {e['measured_peak_bytes'] / MIB:.0f} MiB"
                if e["measured_peak_bytes"]
                else ""
            )
            for e in self.data.get("extrapolations", [])
        ]


def collect_benchmarks(folders: Iterable[str | Path]) -> tuple[list[Benchmark], list[str]]:
    """Every `*.json` under `folders`, validated; (benchmarks sorted by file, errors as `file: $.path: message`)."""
    found, errors = [], []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise DpbenchError(f"benchmarks folder {folder} does not exist")
        for path in sorted(folder.glob("*.json"), key=lambda p: p.as_posix()):
            name = display_path(path)
            try:
                data = read_json(path)
            except FileProblem as e:  # not JSON, NaN or ±Infinity, nested too deep: where, and what
                errors.append(f"{name}: {e.where}: {e.problem}")
                continue
            except DpbenchError as e:  # unreadable, not a regular file, too large, not UTF-8
                errors.append(f"{name}: $: {e}")
                continue
            problems = validation_errors(data, "bench")
            if problems:
                errors.extend(f"{name}: {p}" for p in problems)
            else:
                found.append(Benchmark(name, data))
    return found, errors


def device_types(benchmarks: list[Benchmark]) -> list[str]:
    return sorted({b.device_type for b in benchmarks})

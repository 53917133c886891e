"""The audit's own benchmarks (`benchmarks/bug_zoo.py`: the DP bug zoo, soundness, power), shown in
the leaderboard's audit section: each file's description and first table, as the script wrote them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from dpbench.files import read_text

FILES = ("bug-zoo.md", "audit-soundness.md", "audit-power.md")  # written by benchmarks/bug_zoo.py


@dataclass(frozen=True)
class AuditTable:
    name: str  # the file's name
    title: str
    description: str
    head: list[str]
    rows: list[list[str]]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse(name: str, text: str) -> AuditTable | None:
    lines = text.splitlines()
    title = next((ln[2:].strip() for ln in lines if ln.startswith("# ")), name)
    table = [ln for ln in lines if ln.startswith("|")]
    if len(table) < 2:
        return None
    prose = [ln for ln in lines if ln and not ln.startswith(("#", "|"))]
    return AuditTable(name, title, " ".join(prose), _cells(table[0]), [_cells(ln) for ln in table[2:]])


def collect_audit_tables(folders: Iterable[str | Path]) -> list[AuditTable]:
    out = []
    for folder in folders:
        for name in FILES:
            path = Path(folder) / name
            if path.is_file():
                parsed = parse(name, read_text(path))
                if parsed is not None:
                    out.append(parsed)
    return out

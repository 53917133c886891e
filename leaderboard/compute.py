"""The compute-matched view: each method's utility at DP-SGD's training budget.

Methods differ in what a step costs: DP-SGD makes a forward and a backward pass per example
(ghost clipping a second backward), DP-ZO two forwards per direction and no backward. Per
configuration the leaderboard records training compute (`aggregate.train_compute`, forward-pass
equivalents). Here a method's configurations that differ only in their number of steps form a
line, and the line is read at the compute of the default DP-SGD configuration of the same setting
(task, model, ε, data, device, audit): linearly between the two nearest configurations, never
beyond the budgets measured ("—" then).

Wall time is not matched: results recorded in different sessions were not timed on equal machines
(benchmarks/README.md "Equal footing" has a measured case), so a ratio of two runs' wall times can say more about
the machine than the method. Relative speed belongs to `dpbench bench`, which measures every
method in one invocation.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

from dpbench.leaderboard.aggregate import Row
from dpbench.leaderboard.columns import fmt_options, fmt_source, fmt_target

REFERENCE = "dpsgd"
STEPS = "training.steps"


def _options(row: Row) -> dict:
    return json.loads(row.method_options) if row.method_options else {}


def is_own(method: str, key: str) -> bool:
    """Whether an option belongs to the method's configuration rather than to the shared setting:
    the method's own options, its learning rate, its token pruning, its number of steps."""
    from dpbench.registry import METHODS

    own = METHODS.get(method).options if method in METHODS else {}
    return key in own or key in (STEPS, "training.lr") or key.startswith("token_pruning.")


def setting(row: Row) -> tuple:
    """What every method of one comparison shares (task, model, ε, data, device, audit, ...)."""
    shared = {k: v for k, v in _options(row).items() if not is_own(row.method, k)}
    return (
        row.task,
        row.model,
        row.weights,
        row.target_epsilon,
        row.dataset_source,
        row.device,
        json.dumps(shared, sort_keys=True),
    )


def family(row: Row) -> tuple:
    """A method configuration apart from its number of steps."""
    rest = {k: v for k, v in _options(row).items() if k != STEPS}
    return row.method, json.dumps(rest, sort_keys=True), setting(row)


def is_reference(row: Row) -> bool:
    return row.method == REFERENCE and not any(is_own(row.method, k) for k in _options(row))


def read_at(points: list[tuple[float, float]], x: float) -> float | None:
    """The line through `points` (budget, utility) at budget `x`; None outside the budgets measured."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    close = [y for xi, y in points if abs(xi - x) <= 0.05 * x]  # a configuration within 5% of the budget
    return close[0] if close else None


@dataclass(frozen=True)
class Matched:
    row: Row
    compute_ratio: float | None  # the row's training compute over the reference's
    at_compute: float | None  # the family's utility read at the reference's compute


def matched(rows: list[Row]) -> list[Matched]:
    """Every private row with a reference configuration, in the leaderboard's order."""
    references = {setting(r): r for r in rows if is_reference(r)}
    families: dict[tuple, list[Row]] = defaultdict(list)
    for r in rows:
        families[family(r)].append(r)
    out = []
    for r in rows:
        ref = references.get(setting(r))
        if not r.private or ref is None or r.utility is None:
            continue
        members = [m for m in families[family(r)] if m.utility is not None]

        points = [(m.train_compute.mean, m.utility.mean) for m in members if m.train_compute is not None]
        at = read_at(points, ref.train_compute.mean) if ref.train_compute is not None else None
        out.append(Matched(row=r, compute_ratio=_ratio(r.train_compute, ref.train_compute), at_compute=at))
    return out


def _ratio(stat, ref) -> float | None:
    return stat.mean / ref.mean if stat is not None and ref is not None and ref.mean else None


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


HEAD = ["Method", "Options", "Target ε", "Data", "Utility", "Train compute × dpsgd", "Utility at dpsgd's compute"]
NOTE = (
    "Utility at equal training budgets. Compute counts forward passes over examples, a backward as two "
    "forwards (DP-SGD: 1 forward + 1 backward per example, ghost clipping 1 + 2, DP-ZO 2 forwards per "
    "direction). A method's configurations that differ only in steps are read, linearly between the two "
    "nearest, at the compute of the default dpsgd configuration of the same setting (ε, data, audit); — "
    "where that budget lies outside those measured. Wall time is not compared across results, which were "
    "not all timed on equal machines: the systems benchmark compares speed within one invocation."
)


def table(rows: list[Row]) -> tuple[list[str], list[list[str]]] | None:
    """The view's cells for one task's rows; None when no row has a reference to be matched with."""
    found = matched(rows)
    if not found:
        return None
    cells = [
        [
            m.row.method,
            fmt_options(m.row.method_options),
            fmt_target(m.row.target_epsilon),
            fmt_source(m.row.dataset_source),
            _fmt(m.row.utility.mean, ".3f"),
            _fmt(m.compute_ratio, ".2f", "×"),
            _fmt(m.at_compute, ".3f"),
        ]
        for m in found
    ]
    return HEAD, cells

"""Leaderboard plots as PNG bytes (matplotlib's Agg canvas, no pyplot global state).

Each plot is split into `*_data` (plain, JSON-able numbers and labels) and `draw_*`: the data's
hash goes into the HTML next to the image, so `--check` notices changed figures without
comparing pixels, which differ between matplotlib/FreeType versions.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from dataclasses import replace
from typing import Any

from matplotlib.figure import Figure

from dpbench.leaderboard.aggregate import AUDIT_OPTIONS, Row
from dpbench.leaderboard.columns import fmt_options

Plot = dict[str, Any]
COLORS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)


def data_hash(plot: Plot) -> str:
    return hashlib.sha256(json.dumps(plot, sort_keys=True).encode()).hexdigest()[:16]


def mpl_text(text: str) -> str:
    """Untrusted names in labels: a `$` pair would switch matplotlib to mathtext (and may fail to parse)."""
    return text.replace("$", r"\$")


def series_label(row: Row, varying: set[str]) -> str:
    """Method (and options), plus model / device / dataset only where they differ within the plot."""
    parts = [row.method + (f" [{fmt_options(row.method_options)}]" if row.method_options else "")]
    parts += [str(getattr(row, attr)) for attr in ("model", "device", "dataset_source") if attr in varying]
    return " · ".join(parts)


def short_label(row: Row, varying: set[str]) -> str:
    """A bar's label: the method and the training options only, each by its last name part."""
    options = json.loads(row.method_options) if row.method_options else {}
    kept = [f"{k.split('.')[-1]} {v}" for k, v in sorted(options.items()) if not k.startswith(AUDIT_OPTIONS)]
    parts = [row.method + (f" ({', '.join(kept)})" if kept else "")]
    parts += [str(getattr(row, attr)) for attr in ("model", "device", "dataset_source") if attr in varying]
    return " · ".join(parts)


def varying_attrs(rows: list[Row]) -> set[str]:
    return {a for a in ("model", "device", "dataset_source") if len({getattr(r, a) for r in rows}) > 1}


def frontier_data(rows: list[Row], task: str) -> Plot:
    task_rows = [r for r in rows if r.task == task and r.utility is not None]
    varying = varying_attrs(task_rows)
    series: dict[str, list[list[float | None]]] = defaultdict(list)
    baselines = []
    zero_shot = {}  # one line per pre-trained model (and dataset, device, where those vary)
    for r in task_rows:
        label = series_label(r, varying)
        if r.zero_shot is not None:
            key = series_label(replace(r, method="zero-shot", method_options=""), varying)
            zero_shot.setdefault(f"{key} (pre-trained, no private data)", r.zero_shot.mean)
        if not r.private:
            baselines.append({"label": f"{label} (non-private)", "y": r.utility.mean})
        elif r.epsilon is not None:
            eps_hat = r.eps_hat.mean if r.eps_hat is not None else None
            series[label].append([r.epsilon.mean, r.utility.mean, r.utility.std or 0.0, eps_hat])
    metrics = sorted({r.primary_metric for r in task_rows})
    return {
        "kind": "frontier",
        "title": f"{task}: privacy–utility frontier",
        "ylabel": ", ".join(metrics) or "utility",
        # Rows arrive in leaderboard order (baseline first, by method), so plots keep that order.
        "series": [{"label": k, "points": sorted(v)} for k, v in series.items()],
        "baselines": baselines + [{"label": k, "y": v} for k, v in zero_shot.items()],
    }


def audit_data(rows: list[Row], task: str) -> Plot:
    """Per method: the audits' ε̂ against the accounted ε (a sound audit stays under ε̂ = ε)."""
    task_rows = [r for r in rows if r.task == task and r.private and r.epsilon is not None]
    varying = varying_attrs(task_rows)
    series: dict[str, list[list[float | None]]] = defaultdict(list)
    for r in task_rows:
        whitebox = r.whitebox_eps_hat.mean if r.whitebox_eps_hat is not None else None
        blackbox = r.canary_eps_hat.mean if r.canary_eps_hat is not None else None
        mia = r.eps_hat.mean if r.eps_hat is not None else None
        series[short_label(r, varying)].append([r.epsilon.mean, whitebox, blackbox, mia])
    audited = {k: v for k, v in series.items() if any(x is not None for p in v for x in p[1:])}
    return {
        "kind": "audit",
        "title": f"{task}: empirical ε̂ against accounted ε",
        "series": [{"label": k, "points": sorted(v)} for k, v in audited.items()],
    }


def systems_data(rows: list[Row], device_type: str) -> Plot:
    """Memory and throughput per method on one device type, one panel per task, averaged over
    ε settings and seeds."""
    dev_rows = [r for r in rows if r.device_type == device_type]
    varying = varying_attrs(dev_rows)
    panels = []
    for task in sorted({r.task for r in dev_rows}):
        sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"memory": [0.0, 0], "throughput": [0.0, 0]})
        for r in (r for r in dev_rows if r.task == task):
            label = short_label(r, varying)
            for key, stat in (("memory", r.peak_memory_mib), ("throughput", r.train_samples_per_s)):
                if stat is not None:  # weight each row by its seeds: the mean over all runs
                    sums[label][key][0] += stat.mean * stat.n
                    sums[label][key][1] += stat.n
        bars = [
            {
                "label": k,
                "memory": v["memory"][0] / v["memory"][1] if v["memory"][1] else None,
                "throughput": v["throughput"][0] / v["throughput"][1] if v["throughput"][1] else None,
            }
            for k, v in sums.items()
        ]
        panels.append({"task": task, "bars": bars})
    kinds = sorted({r.memory_kind for r in dev_rows if r.memory_kind})
    return {
        "kind": "systems",
        "title": f"{device_type}: memory and throughput per method",
        "memory_kind": ", ".join(kinds),
        "panels": panels,
    }


def n_points(plot: Plot) -> int:
    """How many marks the plot draws from data (points, baselines, bars)."""
    if plot["kind"] == "frontier":
        return sum(len(s["points"]) for s in plot["series"]) + len(plot["baselines"])
    if plot["kind"] == "audit":
        return sum(v is not None for s in plot["series"] for p in s["points"] for v in p[1:])
    if plot["kind"] == "systems":
        return sum(b[k] is not None for p in plot["panels"] for b in p["bars"] for k in ("memory", "throughput"))
    return len(plot["points"])  # unlearning


def empty_reason(plot: Plot) -> str | None:
    """Why the plot would show nothing, None when it shows something: such a plot is not drawn."""
    if n_points(plot) == 0:
        return {
            "frontier": "no configuration has a utility figure",
            "audit": "no private configuration ran an audit (white-box, black-box canary or membership attack)",
            "systems": "no run recorded memory or throughput",
            "unlearning": "no row has both efficacy and specificity",
        }[plot["kind"]]
    if plot["kind"] == "audit" and not any(v for s in plot["series"] for p in s["points"] for v in p[1:]):
        return (
            "every audit's ε̂ is 0 (no evidence of leakage), so every point would lie on the ε axis; "
            "the table gives them"
        )
    return None


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software" tag: the bytes should not change with the matplotlib version string.
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def epsilon_axis(ax, xs: list[float]) -> None:
    """Log scale when the ε values span a decade or more, else linear; ticks at the ε values
    themselves, in plain numbers (no 7.9956×10⁰ when every point sits near one ε)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    distinct = sorted(set(round(x, 2) for x in xs))
    if len(distinct) > 1 and distinct[-1] / distinct[0] >= 10:
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
    elif distinct:
        pad = max(0.5, 0.15 * distinct[-1])
        ax.set_xlim(max(0.0, distinct[0] - pad), distinct[-1] + pad)
    if distinct:
        ax.xaxis.set_major_locator(FixedLocator(distinct))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))


def draw_frontier(plot: Plot) -> bytes:
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    xs = [p[0] for s in plot["series"] for p in s["points"]]
    epsilon_axis(ax, xs)
    for i, s in enumerate(plot["series"]):
        color = COLORS[i % len(COLORS)]
        xs, ys, errs, hats = zip(*s["points"])
        ax.errorbar(xs, ys, yerr=errs, color=color, marker="o", capsize=3, label=mpl_text(s["label"]))
    for j, b in enumerate(plot["baselines"]):
        color = COLORS[(len(plot["series"]) + j) % len(COLORS)]
        ax.axhline(b["y"], color=color, linestyle="--", label=mpl_text(b["label"]))
    if not plot["series"]:
        ax.set_xlim(0.1, 10)
    ax.set_xlabel("ε (accounted); the audits' ε̂ are in the table and the audit plot")
    ax.set_ylabel(mpl_text(plot["ylabel"]))
    ax.set_title(mpl_text(plot["title"]))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return png(fig)


AUDIT_MARKERS = (("white-box ε̂", "D"), ("black-box canary ε̂", "s"), ("MIA ε̂", "^"))


def draw_audit(plot: Plot) -> bytes:
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    top = max([1.0] + [v for s in plot["series"] for p in s["points"] for v in p if v is not None])
    ax.plot([0, top * 1.1], [0, top * 1.1], color="black", linestyle=":", label="ε̂ = ε (above: a violation)")
    for i, s in enumerate(plot["series"]):  # a colour per configuration, a marker per audit
        color = COLORS[i % len(COLORS)]
        ax.plot([], [], color=color, linestyle="-", label=mpl_text(s["label"]))
        for k, (_name, marker) in enumerate(AUDIT_MARKERS):
            points = [(p[0], p[k + 1]) for p in s["points"] if p[k + 1] is not None]
            if points:
                style = {"linestyle": "-" if k == 0 else "none", "fillstyle": "full" if k == 0 else "none"}
                ax.plot(*zip(*points), color=color, marker=marker, clip_on=False, **style)  # ε̂ = 0 on the axis
    for k, (name, marker) in enumerate(AUDIT_MARKERS):
        fill = "full" if k == 0 else "none"
        ax.plot([], [], color="black", marker=marker, linestyle="none", fillstyle=fill, label=name)
    ax.set_xlim(0, top * 1.1)
    ax.set_ylim(-0.02 * top, top * 1.1)
    ax.set_xlabel("ε (accounted)")
    ax.set_ylabel("ε̂ (empirical lower bound)")
    ax.set_title(mpl_text(plot["title"]))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return png(fig)


def draw_systems(plot: Plot) -> bytes:
    """Small multiples: a row per task, horizontal bars (labels never overlap)."""
    panels = plot["panels"] or [{"task": "no results", "bars": []}]
    height = sum(0.8 + 0.32 * max(1, len(p["bars"])) for p in panels)
    fig = Figure(figsize=(10, height), layout="constrained")
    grid = fig.add_gridspec(len(panels), 2, height_ratios=[max(1, len(p["bars"])) for p in panels])
    columns = (("memory", f"peak memory (MiB; {plot['memory_kind']})"), ("throughput", "train samples/s"))
    for row, panel in enumerate(panels):
        labels = [mpl_text(b["label"]) for b in panel["bars"]]
        for col, (key, xlabel) in enumerate(columns):
            ax = fig.add_subplot(grid[row, col])
            values = [b[key] or 0.0 for b in panel["bars"]]
            ax.barh(range(len(values)), values, color=[COLORS[i % len(COLORS)] for i in range(len(values))])
            ax.set_yticks(range(len(values)), labels if col == 0 else [""] * len(values), fontsize="small")
            ax.invert_yaxis()
            ax.set_title(mpl_text(f"{panel['task']}: {key}"), fontsize="small")
            if row == len(panels) - 1:
                ax.set_xlabel(mpl_text(xlabel), fontsize="small")
    fig.suptitle(mpl_text(plot["title"]))
    return png(fig)


DRAW = {"frontier": draw_frontier, "audit": draw_audit, "systems": draw_systems}


class EmptyPlot(ValueError):
    """A plot that would show nothing is not drawn; `reason` says why (`empty_reason`)."""

    def __init__(self, plot: Plot, reason: str):
        super().__init__(f"not drawing {plot['title']!r}: {reason}")
        self.reason = reason


def draw(plot: Plot) -> bytes:
    """The plot as PNG bytes; EmptyPlot (a ValueError) for a plot that would show nothing."""
    reason = empty_reason(plot)
    if reason is not None:
        raise EmptyPlot(plot, reason)
    if plot["kind"] == "unlearning":  # drawn beside its table's rows (dpbench.leaderboard.unlearning)
        from dpbench.leaderboard.unlearning import draw as draw_unlearning

        return draw_unlearning(plot)
    return DRAW[plot["kind"]](plot)

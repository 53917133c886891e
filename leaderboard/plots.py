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

from dpbench.leaderboard.aggregate import Row
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


def systems_data(rows: list[Row], device_type: str) -> Plot:
    """Memory and throughput per method on one device type, averaged over ε settings and seeds."""
    dev_rows = [r for r in rows if r.device_type == device_type]
    varying = varying_attrs(dev_rows) | ({"task"} if len({r.task for r in dev_rows}) > 1 else set())
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: {"memory": [0.0, 0], "throughput": [0.0, 0]})
    for r in dev_rows:
        label = series_label(r, varying) + (f" · {r.task}" if "task" in varying else "")
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
    kinds = sorted({r.memory_kind for r in dev_rows if r.memory_kind})
    return {
        "kind": "systems",
        "title": f"{device_type}: memory and throughput per method",
        "memory_kind": ", ".join(kinds),
        "bars": bars,
    }


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software" tag: the bytes should not change with the matplotlib version string.
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def draw_frontier(plot: Plot) -> bytes:
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    ax.set_xscale("log")
    for i, s in enumerate(plot["series"]):
        color = COLORS[i % len(COLORS)]
        xs, ys, errs, hats = zip(*s["points"])
        ax.errorbar(xs, ys, yerr=errs, color=color, marker="o", capsize=3, label=mpl_text(s["label"]))
        hat_points = [(h, y) for h, y in zip(hats, ys) if h is not None and h > 0]  # log axis: ε̂=0 has no place
        if hat_points:
            ax.scatter(*zip(*hat_points), facecolors="none", edgecolors=color, marker="D", s=40)
    for j, b in enumerate(plot["baselines"]):
        color = COLORS[(len(plot["series"]) + j) % len(COLORS)]
        ax.axhline(b["y"], color=color, linestyle="--", label=mpl_text(b["label"]))
    if any(h is not None and h > 0 for s in plot["series"] for *_, h in s["points"]):
        ax.scatter([], [], facecolors="none", edgecolors="black", marker="D", label="◇ at ε̂ (audit lower bound)")
    if not plot["series"]:
        ax.set_xlim(0.1, 10)
    ax.set_xlabel("ε (accounted, log scale); ◇ marks the audit's empirical ε̂")
    ax.set_ylabel(mpl_text(plot["ylabel"]))
    ax.set_title(mpl_text(plot["title"]))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return png(fig)


def draw_systems(plot: Plot) -> bytes:
    fig = Figure(figsize=(9, 4))
    labels = [mpl_text(b["label"]) for b in plot["bars"]]
    panels = (("memory", f"peak memory (MiB; {plot['memory_kind']})"), ("throughput", "train samples/s"))
    for k, (key, ylabel) in enumerate(panels):
        ax = fig.add_subplot(1, 2, k + 1)
        values = [b[key] or 0.0 for b in plot["bars"]]
        ax.bar(range(len(values)), values, color=[COLORS[i % len(COLORS)] for i in range(len(values))])
        ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize="small")
        ax.set_ylabel(mpl_text(ylabel), fontsize="small")
    fig.suptitle(mpl_text(plot["title"]))
    return png(fig)


DRAW = {"frontier": draw_frontier, "systems": draw_systems}


def draw(plot: Plot) -> bytes:
    return DRAW[plot["kind"]](plot)

"""`dpbench bench` outputs: a Markdown table, the JSON it is made from, and a bar plot of ratios."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from dpbench.errors import DpbenchError
from dpbench.files import write_json_atomic
from dpbench.schemas import validation_errors

MIB = 2**20
MEMORY_KINDS = {  # what PeakMemory's record kinds measure
    "cpu-rss-above-baseline": "resident set above the process's baseline just before training (VmHWM)",
    "cuda-max-allocated": "torch's max allocated bytes on the GPU (weights included)",
}
PART_NAMES = {  # a memory breakdown's parts (dpbench.memory_breakdown), as the table and plot name them
    "weights": "Weights",
    "trained_gradients": "Trained gradients",
    "per_example_gradients": "Per-example gradients",
    "optimizer_state": "Optimizer state",
    "activations_and_rest": "Activations and rest",
    "saved_activations": "Saved activations",
}
# a part that is a share of another (not beside the others): the plot does not stack it; absent
# from breakdowns recorded before it was counted
SHARE_OF = {"saved_activations": "activations_and_rest"}


def devices(cases: list[dict]) -> dict[str, dict[str, str]]:
    """Every device with a memory figure, in first-seen order: name and kind."""
    out: dict[str, dict[str, str]] = {}
    for c in cases:
        for dev, m in c["memory"].items():
            out.setdefault(dev, {"name": m["name"], "kind": m["kind"]})
    return out


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The results table as plain-text cells (header, rows): renderers escape and decorate them."""
    cases = result["cases"]
    devs = devices(cases)
    depths = any(c.get("layers") is not None for c in cases)
    head = ["Method", "Batch", *(["Layers"] if depths else []), "Visual tokens"]
    for dev in devs:
        head += [f"Peak memory {dev} (MiB)", "× nonprivate"]
    head += ["Train samples/s", "× nonprivate", "Runs"]
    rows = []
    for c in cases:
        tokens = c["visual_tokens"]
        row = [c["label"], str(c["batch_size"]), *([str(c.get("layers") or "all")] if depths else [])]
        row.append(f"{tokens['after']}/{tokens['before']}" if tokens else "—")
        for dev in devs:
            m = c["memory"].get(dev, {})
            row += [
                fmt(m["peak_bytes"] / MIB if m.get("peak_bytes") is not None else None, ".1f"),
                fmt(m.get("ratio"), ".2f", "×"),
            ]
        row += [
            fmt(c["samples_per_s"], ".2f"),
            fmt(c["throughput_ratio"], ".2f", "×"),
            str(c["runs"]) + (f" ({c['failed']} failed)" if c["failed"] else ""),
        ]
        rows.append(row)
    return head, rows


def extrapolation_lines(result: dict[str, Any]) -> list[str]:
    """The full-depth memory table: extrapolated figures, labelled so, beside measured ones."""
    rows = result.get("extrapolations") or []
    if not rows:
        return []
    full = rows[0]["full_layers"]
    lines = [
        "",
        f"## Peak memory at full depth ({full} language-model layers): EXTRAPOLATED",
        "",
        "A least-squares line through each case's peak memory at the depths measured above, read at full depth. "
        "It is an extrapolation, not a measurement; the last column is the measurement at full depth where one "
        "was made.",
        "",
        "| Method | Batch | Device | From layers | Per layer (MiB) | Extrapolated (MiB) | Measured (MiB) |",
        "|---|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        measured = r["measured_peak_bytes"]
        lines.append(
            f"| `{r['label']}` | {r['batch_size']} | {r['device']} | {', '.join(map(str, r['from_layers']))} | "
            f"{r['per_layer_bytes'] / MIB:.1f} | {r['extrapolated_peak_bytes'] / MIB:.1f} | "
            f"{fmt(measured / MIB if measured is not None else None, '.1f')} |"
        )
    return lines


def breakdown_lines(result: dict[str, Any]) -> list[str]:
    """Where each case's peak went on the training device: the measured peak and its parts, labelled."""
    cases = [c for c in result["cases"] if c.get("memory_breakdown")]
    if not cases:
        return []
    first = cases[0]["memory_breakdown"]
    names = part_names(c["memory_breakdown"] for c in cases)
    depths = any(c.get("layers") is not None for c in cases)
    head = ["Method", "Batch", *(["Layers"] if depths else []), f"Peak, {first['peak']['how']}"]
    head += [f"{PART_NAMES[name]}, {how}" for name, how in names.items()]
    lines = [
        "",
        f"## Where the peak memory goes ({first['device']}, MiB)",
        "",
        "Medians over rounds. The peak is measured; each part is labelled measured or derived (its source below). "
        "Parts marked * are outside the peak: resident before training, where the peak counts only what came after."
        + "".join(
            f" {PART_NAMES[name]} are a share of {PART_NAMES[whole].lower()}, not a part beside the others."
            for name, whole in SHARE_OF.items()
            if name in names
        ),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for c in cases:
        b = c["memory_breakdown"]
        row = [f"`{c['label']}`", str(c["batch_size"]), *([str(c.get("layers") or "all")] if depths else [])]
        row.append(fmt(b["peak"]["bytes"] / MIB, ".1f"))
        row += [part_cell(b["components"].get(name)) for name in names]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for name in names:
        sources: dict[str, list[str]] = {}
        for c in cases:
            part = c["memory_breakdown"]["components"].get(name)
            if part is not None:
                sources.setdefault(part["source"], []).append(f"`{c['label']}`")
        for source, labels in sources.items():
            whom = "" if len(sources) == 1 else f" ({', '.join(dict.fromkeys(labels))})"
            lines.append(f"- {PART_NAMES[name]}: {source}{whom}.")
    return lines


def part_names(breakdowns) -> dict[str, str]:
    """Every part the breakdowns have, in PART_NAMES' order, with how the first that has it had it."""
    seen: dict[str, str] = {}
    for b in breakdowns:
        for name, part in b["components"].items():
            seen.setdefault(name, part["how"])
    return {name: seen[name] for name in PART_NAMES if name in seen}


def part_cell(part: dict[str, Any] | None) -> str:
    """A part's MiB; "—" where it is not known or the breakdown has no such part (an older run's)."""
    if part is None:
        return "—"
    value = fmt(part["bytes"] / MIB if part["bytes"] is not None else None, ".1f")
    return value + ("*" if not part["in_peak"] and part["bytes"] is not None else "")


def device_notes(result: dict[str, Any]) -> list[str]:
    return [
        f"{dev}: {d['name']}; {MEMORY_KINDS.get(d['kind'], d['kind'])}." for dev, d in devices(result["cases"]).items()
    ]


def markdown(result: dict[str, Any]) -> str:
    base = result["base"]
    head, rows = table(result)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join([f"`{row[0]}`", *row[1:]]) + " |" for row in rows]
    t = base["training"]
    width = f", language-model width {base['model_hidden_size']}" if base.get("model_hidden_size") else ""
    notes = [
        f"# dpbench bench: {base['task']} on {base['model']} ({base['device']}{width})",
        "",
        f"{t['steps']} training steps per measurement, each in a fresh process; {result['rounds']} interleaved "
        f"round(s); medians over rounds. Ratios: a case's median over `nonprivate`'s median at the same batch "
        f"size (and depth), both measured in this invocation ({result['created']}). Private methods target ε = "
        f"{base['privacy']['epsilon']:g}. Throughput counts examples processed per second of training, set-up "
        f"included.",
        "",
        *lines,
        "",
        *(f"- {note}" for note in device_notes(result)),
        *breakdown_lines(result),
        *extrapolation_lines(result),
    ]
    return "\n".join(notes) + "\n"


def plot_png(result: dict[str, Any]) -> bytes:
    """One panel per device's memory ratio and one for throughput ratio; 1.0 is nonprivate."""
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot global state

    cases = result["cases"]
    several_batches = len({c["batch_size"] for c in cases}) > 1
    depths = any(c.get("layers") is not None for c in cases)
    labels = [
        c["label"].replace("$", r"\$")
        + (f" B={c['batch_size']}" if several_batches else "")
        + (f" L={c.get('layers') or 'all'}" if depths else "")
        for c in cases
    ]
    panels = [
        (f"peak memory {dev} ÷ nonprivate", [c["memory"].get(dev, {}).get("ratio") for c in cases])
        for dev in devices(cases)
    ]
    panels.append(("train samples/s ÷ nonprivate", [c["throughput_ratio"] for c in cases]))
    broken_down = any(c.get("memory_breakdown") for c in cases)
    fig = Figure(figsize=(4 + 4 * (len(panels) + broken_down), 2 + 0.35 * len(cases)))
    y = list(range(len(cases)))[::-1]  # first case on top
    for k, (title, values) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels) + broken_down, k + 1)
        bars = ax.barh(y, [v or 0.0 for v in values], color="tab:blue")
        ax.bar_label(bars, [fmt(v, ".2f", "×") for v in values], fontsize="small", padding=2)
        ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_yticks(y, labels if k == 0 else [""] * len(y), fontsize="small")
        ax.set_title(title, fontsize="medium")
        ax.margins(x=0.2)
    if broken_down:
        breakdown_panel(fig.add_subplot(1, len(panels) + 1, len(panels) + 1), cases, y)
    base = result["base"]
    fig.suptitle(f"{base['task']} on {base['model']} ({base['device']}), medians of {result['rounds']} round(s)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def breakdown_panel(ax, cases: list[dict], y: list[int]) -> None:
    """Stacked bars of the parts each peak counts (MiB), a tick at the measured peak; a part
    outside the peak (a CPU's weights) or not known is not drawn."""
    shown = [(c["memory_breakdown"], yy) for c, yy in zip(cases, y) if c.get("memory_breakdown")]
    left = [0.0] * len(shown)
    for name, label in PART_NAMES.items():
        if name in SHARE_OF:  # inside another bar already
            continue
        parts = [b["components"][name] for b, _ in shown]
        widths = [p["bytes"] / MIB if p["in_peak"] and p["bytes"] is not None else 0.0 for p in parts]
        if any(widths):
            hows = "/".join(sorted({p["how"] for p in parts}))
            ax.barh([yy for _, yy in shown], widths, left=left, label=f"{label.lower()} ({hows})")
            left = [a + w for a, w in zip(left, widths)]
    peaks = [b["peak"]["bytes"] / MIB for b, _ in shown]
    ax.scatter(peaks, [yy for _, yy in shown], marker="|", s=200, color="black", label="peak (measured)")
    ax.set_yticks(y, [""] * len(y))
    ax.set_title(f"where the peak goes, {shown[0][0]['device']} (MiB)", fontsize="medium")
    ax.legend(fontsize="x-small", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)


def write_outputs(result: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    errors = validation_errors(result, "bench")
    if errors:  # a bug in dpbench, not in the user's input: say where
        raise DpbenchError("bench output does not match schema/bench.schema.json: " + "; ".join(errors))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.png"]
    write_json_atomic(paths[0], result)
    paths[1].write_text(markdown(result))
    paths[2].write_bytes(plot_png(result))
    return paths

"""`dpbench bench`: peak training memory and throughput of methods, as ratios to non-private.

Every measurement trains one method for a few steps in a fresh process
(`dpbench.benchmark_worker`), so allocator caches and leaked tensors never carry over. Cases
are interleaved and repeated: each round runs every case once, and each round starts one case
later, so no case always runs first (cold file cache) or right after the same neighbour. Per
case the median over rounds is reported, and its ratio to `nonprivate`'s median at the same
batch size from the same invocation: absolute figures depend on the machine and its load,
ratios measured side by side much less.

A method entry is `NAME[:KEY=VALUE]...`, e.g. `dpsgd:clipping=ghost` or
`dualpriv:clipping=per-sample:update_keep=null`; values are YAML scalars as in `--option`.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from dpbench.benchmark_report import write_outputs
from dpbench.errors import DpbenchError
from dpbench.models.lora import LoraSpec
from dpbench.options import parse_pairs
from dpbench.run_folder import check_runs_dir
from dpbench.spec import PRECISIONS, RunSpec, merge, method_override

DEFAULT_METHODS = "nonprivate,dpsgd,dpsgd:clipping=ghost,dpzo,dualpriv"
KEEP_OPTIONS = ("keep_ratio", "keep_count")  # an entry that sets one is not swept over --keep-ratios


@dataclass(frozen=True)
class MethodEntry:
    name: str
    options: tuple[tuple[str, Any], ...] = ()  # in the order typed: the label reads as the input

    @property
    def label(self) -> str:
        return self.name + "".join(f":{k}={_scalar(v)}" for k, v in self.options)


BASELINE = MethodEntry("nonprivate")


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_method_entry(text: str) -> MethodEntry:
    name, *pairs = (part.strip() for part in text.split(":"))
    if not name:
        raise DpbenchError(f"method entry {text!r} has no method name; expected NAME[:KEY=VALUE]...")
    return MethodEntry(name, tuple(parse_pairs(pairs, f"method entry {text!r}").items()))


def parse_methods(text: str) -> list[MethodEntry]:
    """Comma-separated entries; the plain `nonprivate` baseline is added first when missing."""
    entries = [parse_method_entry(t) for t in text.split(",") if t.strip()]
    if not entries:
        raise DpbenchError("--methods lists no method")
    labels = [e.label for e in entries]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise DpbenchError(f"--methods lists {', '.join(repeated)} more than once")
    return entries if BASELINE in entries else [BASELINE, *entries]


def parse_numbers(text: str, flag: str, kind: type, valid: Callable[[Any], bool], expected: str) -> list:
    try:
        values = [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise DpbenchError(f"{flag} takes comma-separated numbers ({expected}), got {text!r}") from None
    bad = [v for v in values if not valid(v)]
    if not values or bad or len(set(values)) < len(values):
        raise DpbenchError(f"{flag} takes distinct comma-separated {expected}, got {text!r}")
    return values


@dataclass(frozen=True)
class Case:
    entry: MethodEntry
    batch_size: int
    keep_ratio: float | None = None  # set only when swept by --keep-ratios
    layers: int | None = None  # a random-init model's language-model layers (--layers); None: its own

    @property
    def options(self) -> dict[str, Any]:
        extra = {} if self.keep_ratio is None else {"keep_ratio": self.keep_ratio}
        return {**dict(self.entry.options), **extra}

    @property
    def label(self) -> str:
        return self.entry.label + ("" if self.keep_ratio is None else f":keep_ratio={self.keep_ratio:g}")

    @property
    def baseline(self) -> Case:
        return Case(BASELINE, self.batch_size, layers=self.layers)


def prunes_tokens(entry: MethodEntry) -> bool:
    """Whether the method, with the entry's options, prunes visual tokens (bad options fail here)."""
    from dpbench.phases import make_method  # torch loads only when a bench is planned

    spec = RunSpec.from_dict(method_override(entry.name, dict(entry.options)))
    make_method(spec)
    return spec.token_pruning.enabled


def plan_cases(
    entries: list[MethodEntry],
    batch_sizes: list[int],
    keep_ratios: list[float] | None,
    prunes: Callable[[MethodEntry], bool] = prunes_tokens,
    layers: list[int | None] | None = None,
) -> list[Case]:
    cases = []
    for depth in layers or [None]:
        for b in batch_sizes:
            for e in entries:
                swept = prunes(e) and keep_ratios is not None and not set(KEEP_OPTIONS) & set(dict(e.options))
                cases += [Case(e, b, r, depth) for r in keep_ratios] if swept else [Case(e, b, layers=depth)]
    return cases


def case_spec(base: dict[str, Any], case: Case) -> RunSpec:
    """The run spec of a case; the physical batch defaults to the logical one, so memory grows with it."""
    training = {
        "batch_size": case.batch_size,
        "physical_batch_size": base["training"].get("physical_batch_size") or case.batch_size,
    }
    override = {**method_override(case.entry.name, case.options), "training": training, "attacks": []}
    return RunSpec.from_dict(merge(base, {**override, "model_layers": case.layers}))


# -- running ------------------------------------------------------------------------------------
class MeasurementFailed(Exception):
    pass


Worker = Callable[[Any], dict]  # RunSpec -> the worker's systems dict; raises MeasurementFailed


def subprocess_worker(spec) -> dict:
    with tempfile.TemporaryDirectory(prefix="dpbench-bench-") as tmp:
        spec_path, out = Path(tmp) / "spec.json", Path(tmp) / "systems.json"
        spec_path.write_text(json.dumps(spec.to_dict()))
        proc = subprocess.run(
            [sys.executable, "-m", "dpbench.benchmark_worker", str(spec_path), str(out)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise MeasurementFailed(f"exit status {proc.returncode}: {tail[0]}")
        return json.loads(out.read_text())


def run_rounds(
    cases: list[Case],
    specs: list,
    rounds: int,
    worker: Worker = subprocess_worker,
    echo: Callable[[str], None] = lambda _: None,
) -> list[dict]:
    measurements, total = [], rounds * len(cases)
    for r in range(rounds):
        shift = r % len(cases)
        for i in list(range(len(cases)))[shift:] + list(range(len(cases)))[:shift]:
            depth = "" if cases[i].layers is None else f" layers={cases[i].layers}"
            prefix = f"[{len(measurements) + 1}/{total}] round {r + 1}: {cases[i].label} B={cases[i].batch_size}{depth}"
            try:
                systems = worker(specs[i])
                measurements.append({"case": i, "round": r, "systems": systems, "error": None})
                echo(f"{prefix}: {systems['train']['samples_per_s']:.2f} samples/s")
            except MeasurementFailed as e:
                measurements.append({"case": i, "round": r, "systems": None, "error": str(e)})
                echo(f"{prefix}: failed ({e})")
    return measurements


# -- summarising --------------------------------------------------------------------------------
def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(value: float | None, baseline: float | None) -> float | None:
    return value / baseline if value is not None and baseline else None


def case_medians(runs: list[dict]) -> dict[str, Any]:
    """Median samples/s, median peak bytes per device (devices in the order recorded), and the
    median of each figure of the training device's memory breakdown (the first process's)."""
    devices: dict[str, dict[str, Any]] = {}
    for s in runs:
        for rec in s["peak_memory"]:
            d = devices.setdefault(rec["device"], {"name": rec["name"], "kind": rec["kind"], "values": []})
            d["values"].append(rec["peak_bytes"])
    memory = {
        dev: {"name": d["name"], "kind": d["kind"], "peak_bytes": median(d["values"])} for dev, d in devices.items()
    }
    return {
        "samples_per_s": median([s["train"]["samples_per_s"] for s in runs]),
        "memory": memory,
        "visual_tokens": runs[-1]["visual_tokens"] if runs else None,
        "memory_breakdown": median_breakdown([s["memory_breakdown"][0] for s in runs if s.get("memory_breakdown")]),
    }


def median_breakdown(breakdowns: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per figure, the median over one case's runs, with the labels of a run that had the figure."""
    if not breakdowns:
        return None
    last = breakdowns[-1]
    names = dict.fromkeys(name for b in breakdowns for name in b["components"])  # an older run's may lack one
    return {
        "device": last["device"],
        "peak": {**last["peak"], "bytes": median([b["peak"]["bytes"] for b in breakdowns])},
        "components": {
            name: median_component([b["components"][name] for b in breakdowns if name in b["components"]])
            for name in names
        },
    }


def median_component(runs: list[dict[str, Any]]) -> dict[str, Any]:
    known = [c for c in runs if c["bytes"] is not None]
    if not known:
        return runs[-1]
    return {**known[-1], "bytes": median([c["bytes"] for c in known])}


def summarise(cases: list[Case], measurements: list[dict]) -> list[dict]:
    """One row per case: medians over its successful runs and ratios to nonprivate at its batch size."""
    medians = [
        case_medians([m["systems"] for m in measurements if m["case"] == i and m["systems"]]) for i in range(len(cases))
    ]
    rows = []
    for i, case in enumerate(cases):
        med, base = medians[i], medians[cases.index(case.baseline)]
        rows.append(
            {
                "label": case.label,
                "method": case.entry.name,
                "options": case.options,
                "batch_size": case.batch_size,
                "keep_ratio": case.keep_ratio,
                "layers": case.layers,
                "runs": sum(1 for m in measurements if m["case"] == i and m["systems"]),
                "failed": sum(1 for m in measurements if m["case"] == i and m["error"]),
                "visual_tokens": med["visual_tokens"],
                "samples_per_s": med["samples_per_s"],
                "throughput_ratio": ratio(med["samples_per_s"], base["samples_per_s"]),
                "memory": {
                    dev: {**m, "ratio": ratio(m["peak_bytes"], base["memory"].get(dev, {}).get("peak_bytes"))}
                    for dev, m in med["memory"].items()
                },
                "memory_breakdown": med["memory_breakdown"],
            }
        )
    return rows


def extrapolate(rows: list[dict], full_depth: int) -> list[dict]:
    """Peak memory at `full_depth` layers, per case and device, from a least-squares line through
    the case's figures at fewer layers (at least two depths): an extrapolation, never a measurement.
    The figure measured at full depth, where one was, stands beside it."""
    groups: dict[tuple, dict[int, dict]] = {}
    for row in rows:
        if row["layers"] is not None:
            groups.setdefault((row["label"], row["batch_size"]), {})[row["layers"]] = row
    out = []
    for (label, batch), by_depth in groups.items():
        below = sorted(d for d in by_depth if d < full_depth)
        devices = [dev for dev in by_depth[below[0]]["memory"]] if below else []
        for dev in devices:
            points = [(d, by_depth[d]["memory"].get(dev, {}).get("peak_bytes")) for d in below]
            points = [(d, m) for d, m in points if m is not None]
            if len(points) < 2:
                continue
            slope, intercept = statistics.linear_regression(*zip(*points))
            measured = by_depth.get(full_depth, {}).get("memory", {}).get(dev, {}).get("peak_bytes")
            out.append(
                {
                    "label": label,
                    "batch_size": batch,
                    "device": dev,
                    "from_layers": [d for d, _ in points],
                    "per_layer_bytes": slope,
                    "full_layers": full_depth,
                    "extrapolated_peak_bytes": intercept + slope * full_depth,
                    "measured_peak_bytes": measured,
                }
            )
    return out


def full_depth(model: str) -> int | None:
    """A random-init systems model's published language-model depth; None for any other model."""
    from dpbench.models.loading import is_systems_only
    from dpbench.registry import MODELS

    return MODELS.get(model).public.text["num_hidden_layers"] if is_systems_only(model) else None


# -- the command --------------------------------------------------------------------------------
@click.command("bench")
@click.option("--model", default="tiny-llava", show_default=True, help="Registered model or local checkpoint folder.")
@click.option("--task", default="scienceqa", show_default=True)
@click.option("--data-dir", help="Local copy of the task's dataset; without it, the embedded sample.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option(
    "--methods",
    default=DEFAULT_METHODS,
    show_default=True,
    metavar="NAME[:KEY=VALUE]...,...",
    help="Comma-separated method entries; nonprivate (the baseline) is added when missing.",
)
@click.option("--batch-sizes", default="64", show_default=True, help="Comma-separated expected batch sizes.")
@click.option(
    "--layers",
    help="Comma-separated language-model depths of a random-init systems model (its vision tower keeps the same "
    "fraction of its layers); peak memory is then extrapolated to full depth. [default: full depth]",
)
@click.option("--hidden-size", type=int, help="A random-init systems model's language-model width. [default: its own]")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Training forwards: fp32, or bf16 autocast (fp32 master weights and optimiser state).",
)
@click.option("--trainable", help="Comma-separated parameter groups, as `dpbench run --trainable`.")
@click.option("--lora", help="LoRA adapters on the language model, as `dpbench run --lora`.")
@click.option("--keep-ratios", help="Comma-separated visual keep ratios, for methods that prune visual tokens.")
@click.option("--physical-batch-size", type=int, help="Largest physical batch. [default: the batch size]")
@click.option("--steps", default=10, show_default=True, type=int, help="Training steps per measurement.")
@click.option("--rounds", default=3, show_default=True, type=int, help="Measurements per case (interleaved).")
@click.option("--epsilon", default=8.0, show_default=True, type=float, help="Target ε of the private methods.")
@click.option("--n-train", type=int, help="Train on a random subset of this many examples.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out-dir", default="benchmarks", show_default=True, type=click.Path(file_okay=False))
@click.option("--name", help="Output file stem. [default: bench-TASK-MODEL-DEVICE]")
def bench_command(**kw) -> None:
    """Median peak training memory and throughput per method, as ratios to nonprivate."""
    if kw["rounds"] < 1 or kw["steps"] < 1:
        raise DpbenchError("--rounds and --steps must be at least 1")
    entries = parse_methods(kw["methods"])
    batch_sizes = parse_numbers(kw["batch_sizes"], "--batch-sizes", int, lambda b: b >= 1, "positive integers")
    keep_ratios = (
        parse_numbers(kw["keep_ratios"], "--keep-ratios", float, lambda r: 0 < r <= 1, "ratios in (0, 1]")
        if kw["keep_ratios"]
        else None
    )
    layers = (
        sorted(parse_numbers(kw["layers"], "--layers", int, lambda k: k >= 1, "positive integers"))
        if kw["layers"]
        else None
    )
    base = {
        "model": kw["model"],
        "task": kw["task"],
        "data_dir": kw["data_dir"],
        "device": kw["device"],
        "model_hidden_size": kw["hidden_size"],
        "privacy": {"epsilon": kw["epsilon"]},
        "training": {
            "steps": kw["steps"],
            "seed": kw["seed"],
            "n_train": kw["n_train"],
            "physical_batch_size": kw["physical_batch_size"],
            "precision": kw["precision"],
            **({"trainable": kw["trainable"]} if kw["trainable"] else {}),
        },
        **({"lora": lora.to_dict()} if (lora := LoraSpec.from_value(kw["lora"])) is not None else {}),
        # the methods' own memory and speed: the white-box audit's canaries are a run's, not a method's
        "audit": {"gradient_canaries": 0},
    }
    cases = plan_cases(entries, batch_sizes, keep_ratios, layers=layers)
    specs = [case_spec(base, c) for c in cases]  # every spec validated before anything runs
    check_runs_dir(kw["out_dir"], "output folder")
    from dpbench.phases import resolve_names  # torch loads only when a bench is planned
    from dpbench.systems import environment

    for spec in {s.model_layers: s for s in specs}.values():  # every depth asked for, before anything runs
        resolve_names(spec)
    depth = full_depth(kw["model"])
    measurements = run_rounds(cases, specs, kw["rounds"], echo=click.echo)
    rows = summarise(cases, measurements)
    result = {
        "kind": "dpbench-bench",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base": base,
        "rounds": kw["rounds"],
        "environment": environment(kw["device"]),
        "cases": rows,
        "extrapolations": extrapolate(rows, depth) if layers else [],
        "measurements": measurements,
    }
    model = Path(kw["model"]).name or kw["model"]
    stem = kw["name"] or f"bench-{kw['task']}-{model}-{kw['device'].replace(':', '')}"
    for path in write_outputs(result, Path(kw["out_dir"]), stem):
        click.echo(f"wrote {path}")
    failed = [m for m in measurements if m["error"]]
    if failed:
        for m in failed:
            click.echo(f"  failed: {cases[m['case']].label} round {m['round'] + 1}: {m['error']}", err=True)
        raise SystemExit(1)

"""Group results that differ only by seed and summarise each figure as mean ± std over seeds.

A configuration is (task, method, model, target ε, dataset source, options) as the
leaderboard promises, plus the device the run measured on: peak memory and throughput from an
H100 and from a laptop CPU cannot be averaged into one number. "Options" are the method options
and every other run-spec field that differs from its default (LoRA, lr, steps, attacks, ...):
only results that differ by seed alone are averaged.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable

from dpbench.spec import RunSpec, as_recorded
from dpbench.sweep import NON_PRIVATE_METHODS

NON_PRIVATE = None  # target ε of a non-private configuration

# Methods shown in this order (baseline first, the paper's method last); others follow by name.
METHOD_ORDER = ("nonprivate", "dpsgd", "dpzo", "dualpriv")
MIB = 1024 * 1024
TPR_FPR = 0.01  # the leaderboard reports TPR at 1% FPR


@dataclass(frozen=True)
class Stat:
    """Mean over seeds; `std` is the sample standard deviation, None for a single seed."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat | None:
        xs = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not xs:
            return None
        return cls(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))


@dataclass(frozen=True)
class Bound:
    """The strongest audit's ε̂ and the audit that gave it (None when every audit's ε̂ is 0: naming
    one of a tie would mislead)."""

    stat: Stat
    audit: str | None


# the audits whose ε̂ a row holds, in the order a tie is named
AUDIT_BOUNDS = (
    ("whitebox_eps_hat", "white-box"),
    ("parametric_eps_hat", "per-step"),
    ("canary_eps_hat", "black-box"),
    ("eps_hat", "MIA"),
)
# run-spec fields that change what is audited, not what is trained
AUDIT_OPTIONS = ("attacks", "audit.")


def split_options(options_json: str) -> tuple[str, str]:
    """Canonical JSON of the training options and of the audit's settings, "" for none."""
    merged = json.loads(options_json) if options_json else {}
    parts = ({}, {})
    for k, v in merged.items():
        parts[k.startswith(AUDIT_OPTIONS)][k] = v
    return tuple(json.dumps(p, sort_keys=True) if p else "" for p in parts)


@dataclass(frozen=True)
class Row:
    """One leaderboard row: one configuration, its figures aggregated over seeds."""

    task: str
    method: str
    method_options: str  # canonical JSON of `options(spec)`, "" when none
    model: str
    target_epsilon: float | None
    dataset_source: str
    model_source: str
    weights: str  # the first 12 hex digits of the base weights' sha256, "" when unrecorded
    device: str  # device name as recorded (e.g. "NVIDIA H100 80GB HBM3")
    device_type: str  # cpu / cuda / mps
    primary_metric: str
    higher_is_better: bool
    utility: Stat | None
    zero_shot: Stat | None  # the pre-trained model on the same test split: what fine-tuning adds
    epsilon: Stat | None
    delta: Stat | None
    whitebox_eps_hat: Stat | None  # the white-box audit's stronger one-run bound (Steinke et al., f-DP)
    whitebox_ceiling: Stat | None  # the Steinke bound with every guess right
    parametric_eps_hat: Stat | None  # the per-step parametric audit's lower confidence bound
    canary_eps_hat: Stat | None  # the black-box one-run canary audit's bound
    violations: int | None  # seeds whose white-box bound exceeds their accounted ε; None: no white-box audit
    eps_hat: Stat | None
    eps_hat_attack: str | None
    auc: Stat | None
    auc_attack: str | None
    tpr_at_1pct_fpr: Stat | None
    peak_memory_mib: Stat | None
    memory_kind: str | None
    train_samples_per_s: Stat | None
    train_compute: Stat | None  # forward-pass equivalents over examples (`train_compute`)
    seeds: tuple[int, ...]
    run_ids: tuple[str, ...]

    @property
    def n_seeds(self) -> int:
        return len(self.run_ids)

    @property
    def private(self) -> bool:
        return self.target_epsilon is not NON_PRIVATE

    @property
    def training_options(self) -> str:
        return split_options(self.method_options)[0]

    @property
    def audit_options(self) -> str:
        return split_options(self.method_options)[1]

    @property
    def strongest_eps_hat(self) -> Bound | None:
        """The highest mean ε̂ over the audits the row ran."""
        best = None
        for attr, name in AUDIT_BOUNDS:
            stat = getattr(self, attr)
            if stat is not None and (best is None or stat.mean > best.stat.mean):
                best = Bound(stat, name)
        return best if best is None or best.stat.mean > 0 else Bound(best.stat, None)


def primary_memory(result: dict[str, Any]) -> dict[str, Any]:
    """The peak-memory entry of the device type the run trained on (the first entry when none
    matches); across processes, the rank that peaked highest: memory is a per-device figure."""
    entries = result["systems"]["peak_memory"]
    dtype = result["systems"]["device"].split(":")[0]
    matching = [m for m in entries if m["device"].split(":")[0] == dtype] or entries[:1]
    return max(matching, key=lambda m: m["peak_bytes"]) if len(matching) > 1 else matching[0]


def device_label(result: dict[str, Any]) -> tuple[str, str]:
    """(device name, device type) of the run's training device; "× N" for N training processes."""
    mem = primary_memory(result)
    dtype = mem["device"].split(":")[0]
    name = mem.get("name")
    if not name:
        devices = result["environment"]["devices"]
        name = next((d["name"] for d in devices if d["type"] == dtype), mem["device"])
    ranks = result["spec"]["training"].get("nproc", 1)
    return (f"{name} ×{ranks}" if ranks > 1 else name), dtype


def target_epsilon(result: dict[str, Any]) -> float | None:
    if not result["privacy"]["private"] or result["spec"]["method"] == "nonprivate":
        return NON_PRIVATE
    eps = result["spec"]["privacy"]["epsilon"]
    return NON_PRIVATE if eps is None else float(eps)


# fields the configuration names in columns of their own, or that vary within one (the seed)
NAMED_FIELDS = {"task", "method", "model", "device", "data_dir", "method_options", "privacy.epsilon", "training.seed"}


SECTIONS = (
    "privacy",
    "training",
    "audit",
    "token_pruning",
)  # nested in the spec: each field its own option; lora is one value


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if k in SECTIONS and isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@lru_cache
def _default_spec(method: str) -> dict[str, Any]:
    return _flat(RunSpec(method=method).to_dict())  # per method: the default lr is the method's


def options(spec: dict[str, Any]) -> str:
    """Canonical JSON of the method options plus every other spec field off its default."""
    defaults = _default_spec(spec["method"])
    recorded = _flat(as_recorded(spec))  # a field added since reads as it meant then
    changed = {k: v for k, v in recorded.items() if k not in NAMED_FIELDS and k in defaults and v != defaults[k]}
    if spec["method"] in NON_PRIVATE_METHODS:  # a non-private run neither calibrates nor accounts
        changed = {k: v for k, v in changed.items() if not k.startswith("privacy.")}
    # a method whose spec records every option (`Method.spec_records_options`) names only those off default
    default_options = defaults.get("method_options", {})
    given = {k: v for k, v in spec["method_options"].items() if k not in default_options or v != default_options[k]}
    merged = {**given, **changed}
    return json.dumps(merged, sort_keys=True) if merged else ""


def config_key(result: dict[str, Any]) -> tuple:
    spec = result["spec"]
    options_json = options(spec)
    eps = target_epsilon(result)
    # (False, 0) sorts non-private before every ε inside a tuple without comparing None.
    eps_sort = (False, 0.0) if eps is NON_PRIVATE else (True, eps)
    return (
        spec["task"],
        spec["model"],
        result["model"].get("weights_sha256") or "",  # other weights under one name: another model
        method_rank(spec["method"]),
        spec["method"],
        options_json,
        eps_sort,
        dataset_source(result),
        *device_label(result),
    )


CANARY_MARK = "+canaries"  # appended to a dataset source whose training set had canaries added


def dataset_source(result: dict[str, Any]) -> str:
    """The data's source, marked when canaries were added: such a run trained on a changed
    training set, so it is neither averaged with nor presented as a plain run."""
    source = result["dataset"]["source"]
    return f"{source}{CANARY_MARK}" if result["dataset"].get("n_canaries") else source


def method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def tpr_at(attack: dict[str, Any], fpr: float) -> float | None:
    return next((p["tpr"] for p in attack["tpr_at_fpr"] if math.isclose(p["fpr"], fpr)), None)


def best_attack(
    results: list[dict[str, Any]], figure: Callable[[dict], float | None]
) -> tuple[Stat | None, str | None]:
    """The attack whose mean figure over seeds is highest (the strongest attack), with that mean.

    Picking one attack and averaging it over seeds (rather than the max per seed) keeps the
    figure tied to a named attack; ties go to the attack name that sorts first.
    """
    per_attack: dict[str, list[float | None]] = defaultdict(list)
    for r in results:
        for name, attack in (r["audit"] or {}).get("attacks", {}).items():
            per_attack[name].append(figure(attack))
    best: tuple[Stat | None, str | None] = (None, None)
    for name in sorted(per_attack):
        stat = Stat.of(per_attack[name])
        if stat is not None and (best[0] is None or stat.mean > best[0].mean):
            best = (stat, name)
    return best


def audit_part(result: dict[str, Any], section: str, key: str) -> Any:
    """`audit.<section>.<key>` of a result, None where the run has no such audit."""
    part = (result.get("audit") or {}).get(section)
    return part.get(key) if isinstance(part, dict) else None


def one_run_bound(result: dict[str, Any]) -> float | None:
    """The stronger one-run white-box bound; results made before the f-DP bound joined it have the Steinke one."""
    stronger = audit_part(result, "whitebox", "epsilon_one_run")
    return stronger if stronger is not None else audit_part(result, "whitebox", "epsilon_lower_bound")


def violations(results: list[dict[str, Any]]) -> int | None:
    flags = [audit_part(r, "whitebox", "violation") for r in results]
    return None if all(f is None for f in flags) else sum(bool(f) for f in flags)


BACKWARD_IN_FORWARDS = 2  # a backward pass costs about two forwards (the usual FLOP count)


def train_compute(result: dict[str, Any]) -> float | None:
    """Training compute in forward passes over one example: examples processed x (forward +
    2 x backward passes per example, as the method declares them). None for a method not installed."""
    from dpbench.registry import METHODS

    spec = result["spec"]
    if spec["method"] not in METHODS:
        return None
    forward, backward = METHODS.get(spec["method"])(**spec["method_options"]).passes_per_example()
    train = result["systems"]["train"]
    return train["samples_per_s"] * train["wall_s"] * (forward + BACKWARD_IN_FORWARDS * backward)


def make_row(results: list[dict[str, Any]]) -> Row:
    first = results[0]
    spec = first["spec"]
    device, device_type = device_label(first)
    metric = first["utility"]["primary_metric"]
    eps_hat, eps_hat_attack = best_attack(results, lambda a: a["epsilon_lower_bound"])
    if eps_hat is not None and eps_hat.mean == 0:  # no attack gave evidence; naming the first of a tie would mislead
        eps_hat_attack = None
    auc, auc_attack = best_attack(results, lambda a: a["auc"])
    tpr, _ = best_attack(results, lambda a: tpr_at(a, TPR_FPR))
    mems = [primary_memory(r) for r in results]
    return Row(
        task=spec["task"],
        method=spec["method"],
        method_options=options(spec),
        model=spec["model"],
        target_epsilon=target_epsilon(first),
        dataset_source=dataset_source(first),
        model_source=first["model"]["source"],
        weights=(first["model"].get("weights_sha256") or "")[:12],
        device=device,
        device_type=device_type,
        primary_metric=metric,
        higher_is_better=first["utility"].get("higher_is_better", True),
        utility=Stat.of(r["utility"]["metrics"].get(metric) for r in results),
        zero_shot=Stat.of(r["model"]["zero_shot"].get(metric) for r in results),
        epsilon=Stat.of(r["privacy"]["epsilon"] for r in results),
        delta=Stat.of(r["privacy"]["delta"] for r in results),
        whitebox_eps_hat=Stat.of(one_run_bound(r) for r in results),
        parametric_eps_hat=Stat.of(
            (audit_part(r, "whitebox", "parametric") or {}).get("epsilon_lower_bound") for r in results
        ),
        whitebox_ceiling=Stat.of(audit_part(r, "whitebox", "ceiling") for r in results),
        canary_eps_hat=Stat.of(audit_part(r, "canary", "epsilon_lower_bound") for r in results),
        violations=violations(results),
        eps_hat=eps_hat,
        eps_hat_attack=eps_hat_attack,
        auc=auc,
        auc_attack=auc_attack,
        tpr_at_1pct_fpr=tpr,
        peak_memory_mib=Stat.of(m["peak_bytes"] / MIB for m in mems),
        memory_kind=", ".join(sorted({m["kind"] for m in mems})),
        train_samples_per_s=Stat.of(r["systems"]["train"]["samples_per_s"] for r in results),
        train_compute=Stat.of(train_compute(r) for r in results),
        seeds=tuple(sorted(r["spec"]["training"]["seed"] for r in results)),
        run_ids=tuple(sorted(r["run_id"] for r in results)),
    )


def aggregate(results: Iterable[dict[str, Any]]) -> list[Row]:
    """Rows in a fixed order (task, model, method, options, ε, ...), independent of file order."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[config_key(r)].append(r)
    return [make_row(sorted(groups[k], key=lambda r: r["run_id"])) for k in sorted(groups)]

"""Leaderboard columns declared as data: title, which direction is better, and format.

Markdown and HTML both render from this one table, so a column added here shows up in both,
and the direction arrows can never disagree between them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from dpbench.leaderboard.aggregate import CANARY_MARK, Bound, Row, Stat

HIGHER, LOWER = "higher", "lower"
ARROWS = {HIGHER: " ↑", LOWER: " ↓", None: ""}
MISSING = "—"

# What the embedded defaults are, said plainly wherever a result used them.
SOURCE_LABELS = {
    "embedded-sample": "embedded sample (not the real dataset)",
    "embedded-pretrained": "embedded (not a released model)",
    "local": "local",
}


@dataclass(frozen=True)
class Column:
    attr: str  # Row attribute holding the value
    title: str
    fmt: str  # key of FORMATS
    better: str | None = None  # HIGHER, LOWER, or None when direction is meaningless
    description: str = ""
    badge: Callable[[Row], str] | None = None  # a small label beside the value, "" for none

    def value(self, row: Row) -> Any:
        return getattr(row, self.attr)

    def text(self, row: Row) -> str:
        """The cell as plain, unescaped text; the renderer escapes it for its format."""
        return FORMATS[self.fmt](self.value(row))

    def sort_key(self, row: Row) -> float | str:
        v = self.value(row)
        if isinstance(v, Stat):
            return v.mean
        if isinstance(v, Bound):
            return v.stat.mean
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        return "" if v is None else str(v)

    @property
    def header(self) -> str:
        return self.title + ARROWS[self.better]


def fmt_stat(digits: int) -> Callable[[Stat | None], str]:
    def fmt(s: Stat | None) -> str:
        if s is None:
            return MISSING
        return f"{s.mean:.{digits}f}" if s.std is None else f"{s.mean:.{digits}f} ± {s.std:.{digits}f}"

    return fmt


def fmt_bound(b: Bound | None) -> str:
    if b is None:
        return MISSING
    return fmt_stat(2)(b.stat) + (f" ({b.audit})" if b.audit else "")


def fmt_delta(s: Stat | None) -> str:
    return MISSING if s is None else f"{s.mean:.1e}"


def fmt_target(eps: float | None) -> str:
    return "non-private" if eps is None else f"{eps:g}"


def fmt_options(options: str) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in json.loads(options).items()) if options else MISSING


def fmt_source(v: str) -> str:
    base = v.removesuffix(CANARY_MARK)
    label = SOURCE_LABELS.get(base, base)
    return label if base == v else f"{label}, with audit canaries in training"


def fmt_text(v: Any) -> str:
    return MISSING if v is None or v == "" else str(v)


FORMATS: dict[str, Callable[[Any], str]] = {
    "stat1": fmt_stat(1),
    "stat2": fmt_stat(2),
    "stat3": fmt_stat(3),
    "mean3": lambda s: MISSING if s is None else f"{s.mean:.3f}",  # a figure seeds do not change
    "bound": fmt_bound,
    "delta": fmt_delta,
    "target": fmt_target,
    "options": fmt_options,
    "source": lambda v: fmt_source(str(v)),
    "text": fmt_text,
    "int": str,
    "violation": lambda n: MISSING if n is None else f"VIOLATION ({n})" if n else "ok",
}


def audit_badge(row: Row) -> str:
    """The audit's settings in words, "" when the run kept the defaults: `canaries 200 in training, ...`."""
    settings = json.loads(row.audit_options) if row.audit_options else {}
    in_training = row.dataset_source.endswith(CANARY_MARK)
    parts = []
    for key, value in sorted(settings.items()):
        if key == "attacks":
            parts.append("no membership attacks" if value == [] else "attacks " + ", ".join(map(str, value)))
            continue
        if key == "audit.members" and value is None:
            parts.append("every member")
            continue
        part = f"{key.removeprefix('audit.').replace('_', ' ')} {json.dumps(value)}"
        parts.append(part + (" in training" if key == "audit.canaries" and in_training else ""))
    if in_training and "audit.canaries" not in settings:
        parts.insert(0, "canaries in training")
    return "audit: " + ", ".join(parts) if parts else ""


OPTIONS_NOTE = (
    "method options, and every other run-spec field that differs from its default (in the main table, "
    "the audit's settings are a badge beside the method instead)"
)
COLUMNS: tuple[Column, ...] = (
    Column("method", "Method", "text"),
    Column("method_options", "Options", "options", description=OPTIONS_NOTE),
    Column("model", "Model", "text"),
    Column("target_epsilon", "Target ε", "target", description="privacy.epsilon of the run spec"),
    Column(
        "utility",
        "Utility",
        "stat3",
        HIGHER,
        "the task's primary metric on the test split (the validation split where Options say eval_split)",
    ),
    Column(
        "zero_shot", "Zero-shot", "mean3", description="the same metric of the pre-trained model, before fine-tuning"
    ),
    Column("epsilon", "ε (accounted)", "stat2", LOWER, "privacy spent, from the accountant"),
    Column(
        "whitebox_eps_hat",
        "ε̂ white-box",
        "stat2",
        LOWER,
        "one-run lower bound from gradient canaries inside the training steps, every released gradient "
        "observed: the stronger of Steinke et al.'s and the f-DP bound (must not exceed the accounted ε)",
    ),
    Column(
        "parametric_eps_hat",
        "ε̂ per-step",
        "stat2",
        LOWER,
        "the per-step parametric audit's lower confidence bound: noise, clipped norm and rate estimated from "
        "the canaries' releases and composed by the PRV accountant (holds if each step is a subsampled Gaussian)",
    ),
    Column("whitebox_ceiling", "ε̂ ceiling", "mean3", description="the white-box bound if every guess were right"),
    Column(
        "violations",
        "Audit",
        "violation",
        description="VIOLATION: a seed's white-box audit (one-run or per-step) shows it less private than accounted",
    ),
    Column(
        "canary_eps_hat",
        "ε̂ black-box",
        "stat2",
        LOWER,
        "one-run lower bound from canary examples scored on the final model only",
    ),
    Column("delta", "δ", "delta"),
    Column("eps_hat", "ε̂ (MIA)", "stat2", LOWER, "empirical ε lower bound of the strongest membership attack"),
    Column("eps_hat_attack", "ε̂ attack", "text", description="the attack giving the best ε̂"),
    Column("auc", "Best AUC", "stat3", LOWER, "highest membership-inference AUC over attacks (0.5 = chance)"),
    Column("tpr_at_1pct_fpr", "TPR@1%FPR", "stat3", LOWER, "highest true-positive rate at 1% false positives"),
    Column(
        "peak_memory_mib",
        "Peak memory (MiB)",
        "stat1",
        LOWER,
        "training peak memory on the device (CPU: resident-memory high-water mark above the "
        "pre-training baseline; CUDA: torch max allocated)",
    ),
    Column("device", "Device", "text"),
    Column(
        "train_samples_per_s",
        "Train samples/s",
        "stat1",
        HIGHER,
        "training throughput as the run recorded it; runs of different sessions were not timed on equal "
        "machines, so compare speed in the systems benchmark (one invocation)",
    ),
    Column("dataset_source", "Dataset", "source"),
    Column("model_source", "Model source", "source"),
    Column("n_seeds", "Seeds", "int", description="number of seeds averaged (mean ± sample std)"),
)

BY_ATTR = {c.attr: c for c in COLUMNS}  # the full table's columns by Row attribute (render reads it too)

# The compact main table of a task; every column of COLUMNS stays in the full table beside it.
MAIN_COLUMNS: tuple[Column, ...] = (
    Column(
        "method",
        "Method",
        "text",
        description="the method; a badge beside it gives the audit's settings where they are not the defaults "
        "(canaries in training: the run trained on a changed training set, never averaged with plain runs)",
        badge=audit_badge,
    ),
    Column("training_options", "Options", "options", description=OPTIONS_NOTE),
    BY_ATTR["epsilon"],
    BY_ATTR["utility"],
    Column(
        "strongest_eps_hat",
        "ε̂ strongest",
        "bound",
        LOWER,
        "the highest of the audits' ε̂ (white-box, per-step, black-box canary, MIA) and the audit that gave it; "
        "none is named when every ε̂ is 0",
    ),
    BY_ATTR["violations"],
    BY_ATTR["peak_memory_mib"],
    BY_ATTR["train_samples_per_s"],
    BY_ATTR["n_seeds"],
)


def legend() -> list[Column]:
    """Each described column once, by header: the main table's first, then the full table's."""
    seen: dict[str, Column] = {}
    for c in MAIN_COLUMNS + COLUMNS:
        if c.description:
            seen.setdefault(c.header, c)
    return list(seen.values())

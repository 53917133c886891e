"""A run's result as typed records: built by the run phases, serialised in one place
(`RunResult.to_dict`), validated by `schema/result.schema.json` when written, and read back
(`RunResult.from_dict`) by the summary, the audit report and re-audits."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(kw_only=True)
class DatasetRecord:
    task: str
    source: str
    path: str | None
    layout: str | None = None
    n_train: int  # what the method trained on, canaries included
    n_canaries: int = 0
    n_members: int
    n_nonmembers: int
    n_test: int  # examples utility was measured on


@dataclass(kw_only=True)
class ModelRecord:
    name: str
    source: str
    path: str | None = None
    architecture: str
    weights_sha256: str | None = None
    parameters_total: int
    parameters_trainable: int
    zero_shot: dict[str, float]


@dataclass(kw_only=True)
class UtilityRecord:
    split: str = "test"
    primary_metric: str
    higher_is_better: bool = True
    metrics: dict[str, float]
    unavailable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class TrainingRecord:
    steps: int
    epochs: float
    final_loss: float | None
    loss_curve: list[float] = field(default_factory=list)
    details: dict[str, Any]


@dataclass(kw_only=True)
class SystemsRecord:
    device: str
    peak_memory: list[dict[str, Any]]
    train: dict[str, float]
    eval: dict[str, float]
    total_wall_s: float
    visual_tokens: dict[str, int]
    # wall seconds per phase of `dpbench run` (prepare, train, evaluate, zero_shot, audit); None elsewhere
    phases: dict[str, float] | None = None
    # parts of the phases, "<phase>.<part>" -> wall seconds (dpbench.timing); None in older results
    phase_parts: dict[str, float] | None = None
    # where the training device's peak went, per process (dpbench.memory_breakdown); None in older results
    memory_breakdown: list[dict[str, Any]] | None = None


@dataclass(kw_only=True)
class AuditRecord:
    n_members: int
    n_nonmembers: int
    confidence: float
    attacks: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    references: dict[str, Any] | None = None
    canary: dict[str, Any] | None = None
    whitebox: dict[str, Any] | None = None  # the white-box gradient-canary audit, made during training
    report: str | None = None  # the HTML report's file name in the run folder

    def strongest(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """The attack with the largest `key` (e.g. "auc"), or None when no attack was scored."""
        return max(self.attacks.items(), key=lambda kv: kv[1][key]) if self.attacks else None


@dataclass(kw_only=True)
class RunResult:
    run_id: str
    spec: dict[str, Any]
    environment: dict[str, Any]
    dataset: DatasetRecord
    model: ModelRecord
    utility: UtilityRecord
    privacy: dict[str, Any]
    training: TrainingRecord
    systems: SystemsRecord
    audit: AuditRecord | None
    created: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The schema's field order: schema_version, run_id, created, spec, ... audit."""
        d = dataclasses.asdict(self)
        head = {k: d.pop(k) for k in ("schema_version", "run_id", "created")}
        return {**head, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        """A result file's contents (already schema-checked: `schemas.load_result`)."""
        audit = d.get("audit")
        return cls(
            run_id=d["run_id"],
            spec=d["spec"],
            environment=d["environment"],
            dataset=DatasetRecord(**d["dataset"]),
            model=ModelRecord(**d["model"]),
            utility=UtilityRecord(**d["utility"]),
            privacy=d["privacy"],
            training=TrainingRecord(**d["training"]),
            systems=SystemsRecord(**d["systems"]),
            audit=AuditRecord(**audit) if audit is not None else None,
            created=d["created"],
            schema_version=d["schema_version"],
        )

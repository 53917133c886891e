"""An unlearning run's spec: the parent run, the forget request, the method and its recipe.

Its hash names the run folder (`runs/unlearn-<method>-<hash>`), so the same request on the same
parent with the same recipe is the same run, and a sweep skips it once it has a result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from dpbench.checks import check_count, check_seed, finite
from dpbench.errors import DpbenchError

STEPS = 30  # a few epochs of the embedded default's 1 % forget set at batch 8
BATCH_SIZE = 8


@dataclass(frozen=True)
class UnlearnSpec:
    parent: str  # the parent run's id (its folder's name)
    method: str
    forget: str  # the request, as `ForgetRequest.parse` reads it
    options: dict[str, Any] = field(default_factory=dict)  # the method's options, defaults filled in
    seed: int = 0  # draws the forget set of an examples request, the batches and the initialisation
    steps: int = STEPS  # optimiser steps of a gradient method (retrain uses the parent's recipe)
    batch_size: int = BATCH_SIZE  # forget and retain examples per step, each
    lr: float | None = None  # Adam's; None: the method's default

    def __post_init__(self) -> None:
        check_seed("seed", self.seed)
        check_count("unlearning steps", self.steps)
        check_count("unlearning batch size", self.batch_size)
        if self.lr is not None and not (finite(self.lr) and self.lr > 0):
            raise DpbenchError(f"unlearning lr must be a positive number, got {self.lr!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnlearnSpec:
        try:
            return cls(**d)
        except TypeError as e:  # a field missing or unknown
            raise DpbenchError(f"not an unlearning spec: {e}") from None

    from_record = from_dict  # what `RunFolder.finished` reads a recorded spec with

    def replace(self, **changes: Any) -> UnlearnSpec:
        return dataclasses.replace(self, **changes)

    def run_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
        return f"unlearn-{self.method}-{digest}"

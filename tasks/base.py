"""The task interface: splits of examples, prompts, and scoring.

A task loads four disjoint sets: `train` (what a method may train on), `nonmembers` (held out
from the same distribution, never trained on: the audit's negatives), `test` (utility), and
the audit's `members` are drawn from `train` by the runner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dpbench.examples import Example
from dpbench.registry import TASKS

__all__ = ["TASKS", "Example", "Task", "TaskData"]  # the registry re-exported beside its base class

if TYPE_CHECKING:
    from dpbench.models.base import VisionLanguageModel


@dataclass(frozen=True)
class TaskData:
    train: list[Example]
    nonmembers: list[Example]
    test: list[Example]
    source: str  # "embedded-sample" or "local"
    path: str | None
    layout: str | None


class Task(ABC):
    name: str  # set by the registry decorator
    primary_metric: str = "accuracy"
    higher_is_better: bool = True

    @abstractmethod
    def load(self, data_dir: str | None) -> TaskData:
        """Read local data from data_dir, or build/read the embedded sample when it is None."""

    @abstractmethod
    def evaluate(self, model: VisionLanguageModel, examples: list[Example]) -> dict[str, float]:
        """Utility metrics of `model` on `examples`."""

    def unavailable_metrics(self) -> dict[str, str]:
        """Metrics that could not be computed here, with why (never reported as 0)."""
        return {}

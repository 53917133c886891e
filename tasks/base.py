"""The task interface: splits of examples, prompts, and scoring.

A task loads four disjoint sets: `train` (what a method may train on), `nonmembers` (held out
from the same distribution, never trained on: the audit's negatives), `test` (utility), and
the audit's `members` are drawn from `train` by the runner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpbench.registry import Registry

if TYPE_CHECKING:
    from dpbench.models.base import VisionLanguageModel


@dataclass(frozen=True)
class Example:
    uid: str
    prompt: str  # the user turn's text; the model's chat template adds the image placeholder
    target: str  # the reference continuation a method trains on
    image: Path | None = None
    choices: tuple[str, ...] = ()  # continuations scored for multiple choice (e.g. "A", "B")
    answer: int | None = None  # index into choices
    group: str = ""  # identity of the image: examples sharing it stay in one split
    references: tuple[str, ...] = ()  # extra references for generation metrics
    # generation tasks: the target is a whole answer, so training (and the audit's losses) also
    # score the end-of-sequence token after it; without it a well-trained model never learns
    # to stop and greedy decoding runs on to the token limit
    ends_with_eos: bool = False
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


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


TASKS: Registry[type[Task]] = Registry("task", base=Task, plugins="dpbench.tasks")

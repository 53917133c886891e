"""The method interface: train a model on private data and report what it spent."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from dpbench.methods.token_pruning import TOKEN_PRUNING_OPTIONS, TokenPruner, TokenPruning, install_token_pruning
from dpbench.models.base import VisionLanguageModel
from dpbench.privacy import PrivacyReport
from dpbench.registry import Registry
from dpbench.spec import RunSpec
from dpbench.tasks.base import Example


@dataclass
class TrainReport:
    steps: int
    epochs: float
    losses: list[float]
    privacy: PrivacyReport
    samples: int = 0  # examples processed (per forward, counted once per example per step)
    tokens: int = 0  # non-padding input tokens processed, visual tokens included
    details: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    name: str  # set by the registry decorator
    private: bool = True
    options: dict[str, Any] = {}  # option name -> default; unknown options are an error
    # Adam's learning rate when the spec gives none; None: the method does not use spec.training.lr.
    # Chosen on the embedded ScienceQA validation split (README, "Learning rates and dualpriv's defaults").
    default_lr: float | None = 1e-3
    per_example_gradients = False  # trains on per-example gradients (Opacus): checked in `prepare`

    def __init__(self, **options: Any):
        from dpbench.errors import DpbenchError

        defaults = {**TOKEN_PRUNING_OPTIONS, **self.options}  # every method can prune visual tokens
        unknown = set(options) - set(defaults)
        if unknown:
            known = ", ".join(defaults)
            raise DpbenchError(f"method {self.name!r} has no option(s) {', '.join(sorted(unknown))}; known: {known}")
        self.opts = {**defaults, **options}
        self.token_pruning = TokenPruning.from_options(self.opts)  # None: off; bad values fail here
        self.pruner: TokenPruner | None = None

    def prepare(self, model: VisionLanguageModel) -> None:
        """Change the model before training and evaluation: installs visual-token pruning when
        the options ask for it. Subclasses that override this call `super().prepare(model)`."""
        if self.per_example_gradients:  # refuse before any run folder exists or anything is spent
            model.check_per_example_gradients()
        if self.token_pruning is not None:
            self.pruner = install_token_pruning(model, self.token_pruning)

    @abstractmethod
    def train(self, model: VisionLanguageModel, data: list[Example], spec: RunSpec, delta: float) -> TrainReport:
        """Train `model` in place on `data`; `delta` is the run's δ."""


METHODS: Registry[type[Method]] = Registry("method", base=Method, plugins="dpbench.methods")

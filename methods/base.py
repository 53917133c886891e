"""The method interface: train a model on private data and report what it spent."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from dpbench.errors import DpbenchError
from dpbench.examples import Example
from dpbench.models.pruning_spec import ENTRY_KEYS, TokenPruning
from dpbench.privacy import PrivacyReport
from dpbench.registry import METHODS

if TYPE_CHECKING:
    from dpbench.models.base import VisionLanguageModel
    from dpbench.spec import RunSpec

__all__ = ["METHODS", "Method", "TrainReport"]


@dataclass
class TrainReport:
    steps: int
    epochs: float
    losses: list[float]
    privacy: PrivacyReport
    samples: int = 0  # examples processed (per forward, counted once per example per step)
    tokens: int = 0  # non-padding input tokens processed, visual tokens included
    details: dict[str, Any] = field(default_factory=dict)
    # the white-box audit's analysis (`gradient_canaries.deferred_section`): run once, when `whitebox`
    # or `whitebox_scores` is first read, so `phases.train` runs it after training is timed
    whitebox_audit: Callable[[], tuple[dict[str, Any], tuple[Any, Any]]] | None = field(default=None, repr=False)
    _whitebox: tuple | None = field(default=None, init=False, repr=False)

    def _audited(self) -> tuple | None:
        if self._whitebox is None and self.whitebox_audit is not None:
            self._whitebox = self.whitebox_audit()
        return self._whitebox

    @property
    def whitebox(self) -> dict[str, Any] | None:
        """The white-box gradient-canary audit (`audit.whitebox`)."""
        audited = self._audited()
        return audited[0] if audited else None

    @property
    def whitebox_scores(self) -> tuple[Any, Any] | None:
        """(included, scores) of its canaries, saved with the run."""
        audited = self._audited()
        return audited[1] if audited else None


class Method(ABC):
    name: str  # set by the registry decorator
    private: bool = True
    options: dict[str, Any] = {}  # option name -> default; unknown options are an error
    # Adam's learning rate when the spec gives none; None: the method does not use spec.training.lr.
    # Chosen on the embedded ScienceQA validation split (README, "Learning rates and dualpriv's defaults").
    default_lr: float | None = 1e-3
    # the visual-token pruning a spec without `token_pruning` runs under (a model transform)
    default_token_pruning: TokenPruning = TokenPruning("none")
    per_example_gradients = False  # trains on per-example gradients (Opacus): checked in `prepare`
    # trains on gradients it can give an audit-only parameter block: a run then carries the
    # white-box audit by default (spec.AUDIT_CANARIES), training unchanged; without one (dpzo's
    # scalar releases) the canaries change training and are opt-in
    audit_block = False
    # the run spec names every option's value, defaults filled in, so a changed default gives new
    # run ids (never a finished run of the old default taken for one of the new); off for methods
    # whose committed results predate it, so their run ids stay
    spec_records_options = False

    def __init__(self, **options: Any):
        unknown = set(options) - set(self.options)
        if unknown & set(ENTRY_KEYS):
            raise DpbenchError(
                f"{', '.join(sorted(unknown & set(ENTRY_KEYS)))}: token pruning is part of "
                "the run spec, not a method option: --token-pruning STRATEGY[,keep_ratio=R] "
                "(or token_pruning: in a spec file)"
            )
        if unknown:
            known = ", ".join(self.options) or "none"
            raise DpbenchError(f"method {self.name!r} has no option(s) {', '.join(sorted(unknown))}; known: {known}")
        self.opts = {**self.options, **options}

    def passes_per_example(self) -> tuple[int, int]:
        """(forward, backward) passes over one sampled example in a step: the unit of the
        leaderboard's compute-matched view (`dpbench.leaderboard.compute`)."""
        return 1, 1

    def check_model(self, model: VisionLanguageModel) -> None:
        """Refuse a model this method cannot train, from its module names and trainable groups
        alone: the run's checks call it on the model's weightless skeleton, before any folder
        exists or anything is spent."""
        if self.per_example_gradients:
            model.check_per_example_gradients()

    def prepare(self, model: VisionLanguageModel) -> None:
        """Change the model before training and evaluation, after the spec's transforms (LoRA,
        trainable groups, token pruning). Subclasses that override this call `super().prepare(model)`."""
        self.check_model(model)

    @abstractmethod
    def train(self, model: VisionLanguageModel, data: list[Example], spec: RunSpec, delta: float) -> TrainReport:
        """Train `model` in place on `data`; `delta` is the run's δ."""

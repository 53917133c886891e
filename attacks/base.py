"""The attack interface: one membership score per example, higher = more likely a member."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from dpbench.attacks.signals import Signals
from dpbench.registry import ATTACKS

__all__ = ["ATTACKS", "Attack"]  # the registry re-exported beside its base class


class Attack(ABC):
    name: str  # set by the registry decorator
    needs_references: bool = False  # reads `signals.reference_losses()`: skipped without reference models
    reads_token_stats: bool = False  # reads `signals.token_stats()`: the target's loss then comes from that pass

    @abstractmethod
    def score(self, signals: Signals) -> np.ndarray:
        """Scores for `signals.examples`, in order."""

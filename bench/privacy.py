"""Privacy accounting, wrapping Opacus' accountants.

The accountant is always passed explicitly: Opacus' `get_noise_multiplier` defaults to RDP
while `PrivacyEngine` defaults to PRV, and mixing them silently miscalibrates σ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from dpbench.errors import DpbenchError


@dataclass(frozen=True)
class PrivacyReport:
    """What the schema's `privacy` section records."""

    private: bool
    epsilon: float | None
    target_epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int
    releases_per_step: int = 1
    accountant: str | None = None
    max_grad_norm: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def non_private(cls, steps: int) -> PrivacyReport:
        return cls(False, None, None, None, None, None, steps, notes=("non-private: no privacy guarantee",))

    def to_dict(self) -> dict:
        d = self.__dict__.copy()
        d["notes"] = list(self.notes)
        return d


def default_delta(n_train: int) -> float:
    """δ well below 1/n: 1/(10 n), the usual choice for a data set of n examples."""
    return 1.0 / (10 * n_train)


def check_delta(delta: float, n_train: int) -> None:
    if not 0 < delta < 1.0 / n_train:
        raise DpbenchError(f"delta must lie in (0, 1/n_train) = (0, {1.0 / n_train:.3g}) for {n_train} training examples, got {delta}")


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """The σ that spends `target_epsilon` over `steps` Poisson-sampled releases."""
    try:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=0.005,
            )
        )
    except ValueError as e:
        raise DpbenchError(f"cannot reach ε = {target_epsilon} at δ = {delta:.2g}: {e}") from None


def spent_epsilon(*, noise_multiplier: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """ε spent by `steps` releases of the subsampled Gaussian mechanism."""
    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return float(acc.get_epsilon(delta=delta))

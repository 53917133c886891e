"""Privacy accounting, wrapping Opacus' accountants.

The accountant is always passed explicitly: Opacus' `get_noise_multiplier` defaults to RDP
while `PrivacyEngine` defaults to PRV, and mixing them silently miscalibrates σ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import opacus
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from dpbench.cache import remembered
from dpbench.errors import DpbenchError
from dpbench.output import note
from dpbench.timing import part


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
    epsilon_rdp: float | None = None  # the same releases by RDP, beside the headline (looser)

    @classmethod
    def released(
        cls,
        spec,
        *,
        epsilon: float,
        delta: float,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        notes: tuple[str, ...],
        releases_per_step: int = 1,
        epsilon_rdp: float | None = None,
    ) -> PrivacyReport:
        """A private run's record; the target ε, accountant and clipping bound come from the spec."""
        p = spec.privacy
        return cls(
            True,
            float(epsilon),
            p.epsilon,
            delta,
            noise_multiplier,
            sample_rate,
            steps,
            releases_per_step,
            p.accountant,
            p.max_grad_norm,
            tuple(notes),
            epsilon_rdp,
        )

    @classmethod
    def non_private(cls, steps: int) -> PrivacyReport:
        return cls(False, None, None, None, None, None, steps, notes=("non-private: no privacy guarantee",))

    def to_dict(self) -> dict:
        d = self.__dict__.copy()
        d["notes"] = list(self.notes)
        return d


SEEDED_NOISE = (
    "DP noise comes from torch's generator seeded by the spec's seed: reproducible, not for deployment "
    "(--option secure_rng=true draws it from a cryptographically secure generator)"
)


def default_delta(n_train: int) -> float:
    """δ well below 1/n: 1/(10 n), the usual choice for a data set of n examples."""
    return 1.0 / (10 * n_train)


def check_delta(delta: float, n_train: int) -> None:
    if not 0 < delta < 1.0 / n_train:
        raise DpbenchError(
            f"delta must lie in (0, 1/n_train) = (0, {1.0 / n_train:.3g}) for {n_train} training examples, got {delta}"
        )


EPSILON_TOLERANCE = 0.005
# RDP orders for calibration and accounting alike: Opacus' default grid stops at 63, where the
# optimum sits once σ is large (σ ≥ 20 at q = 0.0435 and 150 steps, the bracket Opacus' σ search
# starts from; any ε target much below 0.1); the integer orders beyond cost little.
RDP_ORDERS = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *range(12, 64),
    *(64, 80, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 8192),
)


def accountant_options(accountant: str) -> dict:
    """Keyword arguments of an Opacus accountant's `get_epsilon`."""
    return {"alphas": list(RDP_ORDERS)} if accountant == "rdp" else {}


# Opacus' PRV fails to discretise some extreme mechanisms (a small σ at a large rate over few steps)
PRV_FAILURES = (OverflowError, RuntimeError, ValueError, MemoryError)


def accountant_epsilon(acc, delta: float) -> float:
    """ε of an Opacus accountant's history at δ (RDP over `RDP_ORDERS`), saying when even the
    widest order was the best (ε is then looser than it could be). Where PRV cannot discretise
    the history, RDP's figure (an upper bound), with a note."""
    if acc.mechanism() != "rdp":
        try:
            return float(acc.get_epsilon(delta=delta))
        except PRV_FAILURES as e:
            note(f"the PRV accountant cannot account this run ({type(e).__name__}): ε is RDP's upper bound")
            return rdp_beside(acc, delta)
    epsilon, best = acc.get_privacy_spent(delta=delta, alphas=list(RDP_ORDERS))
    if best == RDP_ORDERS[-1]:
        note(f"RDP's best order is the grid's largest ({best}): ε = {epsilon:.4g} is looser than needed")
    return float(epsilon)


def rdp_beside(acc, delta: float) -> float | None:
    """ε of a PRV accountant's history by RDP too: the looser figure other tools report."""
    if acc.mechanism() == "rdp":
        return None  # already the headline
    rdp = create_accountant("rdp")
    rdp.history = list(acc.history)
    return accountant_epsilon(rdp, delta)


CALIBRATION_CACHE = "noise-calibration.json"


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """The σ that spends `target_epsilon` over `steps` Poisson-sampled releases.

    Opacus finds σ by bisection over its accountant, which for RDP evaluates fractional orders
    in pure Python: one call costs more than many DP-SGD steps of the embedded model
    (benchmarks/README.md). The answer depends only on the arguments and Opacus' version, so it is kept on disk
    (`$DPBENCH_CACHE/noise-calibration.json`): a sweep's second seed and every benchmark round
    after the first reuse it. Its wall is the run's part "calibration" of its phase (dpbench.timing).
    """
    with part("calibration"):
        return _calibrate_noise(target_epsilon, delta, sample_rate, steps, accountant)


def _calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    key = [
        accountant,
        repr(float(target_epsilon)),
        repr(float(delta)),
        repr(float(sample_rate)),
        int(steps),
        EPSILON_TOLERANCE,
        RDP_ORDERS[-1],
        opacus.__version__,
    ]
    calibrate = lambda: float(  # noqa: E731
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=EPSILON_TOLERANCE,
            **accountant_options(accountant),
        )
    )
    try:
        return remembered(CALIBRATION_CACHE, key, calibrate)
    except ValueError as e:
        raise DpbenchError(f"cannot reach ε = {target_epsilon} at δ = {delta:.2g}: {e}") from None
    except (OverflowError, RuntimeError, MemoryError):  # PRV_FAILURES but ValueError, handled above
        # PRV cannot discretise this mechanism: calibrate by RDP, which over-states ε (σ errs high)
        note(f"the PRV accountant cannot calibrate σ for ε = {target_epsilon} here: σ is RDP's (more noise)")
        return _calibrate_noise(target_epsilon, delta, sample_rate, steps, "rdp")


def spent_epsilon(*, noise_multiplier: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """ε spent by `steps` releases of the subsampled Gaussian mechanism."""
    acc = create_accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]
    return accountant_epsilon(acc, delta)

"""Visual-token pruning as the run spec names it (`token_pruning`), apart from the hooks that do
it (`dpbench.models.token_pruning`): a transform of the model, like LoRA, that every method can
run under; a method only says which one it runs under by default (`Method.default_token_pruning`).

`--token-pruning random,keep_ratio=0.5`, `--token-pruning none`, or in a spec file
`token_pruning: {strategy: merge, keep_ratio: 0.25}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from dpbench.checks import COUNT_LIMIT, check_fraction, check_seed
from dpbench.errors import DpbenchError
from dpbench.options import parse_pairs
from dpbench.registry import Registry

OFF = "none"
EXAMPLE = "random,keep_ratio=0.5"
# a method entry's keys (sweep files, `dpbench bench`, and once method options) -> the field they set
ENTRY_KEYS = {"token_pruning": "strategy", "keep_ratio": "keep_ratio", "keep_count": "keep_count"}
DEFAULT_KEEP_RATIO = 0.25  # the paper's; dualpriv's own default is set on the method
# name -> (images, k) -> (n_images, k, D); the strategies register in `dpbench.models.token_pruning`
STRATEGIES: Registry[Callable] = Registry("token-pruning strategy", plugins="dpbench.models.token_pruning")


@dataclass(frozen=True)
class TokenPruning:
    strategy: str  # a STRATEGIES name, or "none": every visual token is kept
    keep_ratio: float = DEFAULT_KEEP_RATIO
    keep_count: int | None = None  # wins over keep_ratio when set
    seed: int = 0  # the random strategy's generator

    def __post_init__(self):
        if not isinstance(self.strategy, str):
            raise DpbenchError(f"token_pruning strategy must be a name, got {self.strategy!r}")
        if self.strategy != OFF:
            STRATEGIES.get(self.strategy)  # unknown name: an error listing close matches
        object.__setattr__(self, "keep_ratio", check_fraction("keep_ratio", self.keep_ratio))
        count = self.keep_count
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or not 1 <= count < COUNT_LIMIT
        ):
            raise DpbenchError(f"keep_count must be a positive integer below 2**31, got {self.keep_count!r}")
        check_seed("token_pruning seed", self.seed)
        if not self.enabled and (self.keep_ratio != DEFAULT_KEEP_RATIO or self.keep_count is not None):
            # one spelling of "off", so two specs that run the same have one run id
            raise DpbenchError(
                "token_pruning 'none' keeps every visual token: give a strategy with keep_ratio or "
                f"keep_count (e.g. {EXAMPLE})"
            )

    @property
    def enabled(self) -> bool:
        return self.strategy != OFF

    def kept(self, n: int) -> int:
        return min(n, self.keep_count if self.keep_count is not None else max(1, round(self.keep_ratio * n)))

    @classmethod
    def parse(cls, text: str, default: TokenPruning | None = None) -> TokenPruning:
        """`STRATEGY[,keep_ratio=R][,keep_count=K]`, `keep_ratio=R` (the default strategy), or `none`."""
        first, *rest = (s.strip() for s in text.split(","))
        fields = {} if "=" in first else {"strategy": first}
        fields.update(parse_pairs([first, *rest] if "=" in first else rest, "--token-pruning"))
        if not set(fields) <= {"strategy", "keep_ratio", "keep_count", "seed"}:
            raise DpbenchError(
                f"--token-pruning takes STRATEGY[,keep_ratio=R][,keep_count=K] or none (e.g. {EXAMPLE}); got {text!r}"
            )
        return cls.from_value(fields, default)

    @classmethod
    def from_value(cls, value: Any, default: TokenPruning | None = None) -> TokenPruning | None:
        """A spec's `token_pruning`: null (the method's default), a strategy name, `none`, a
        mapping, or the CLI string; a mapping without a strategy changes `default`'s fields."""
        if value is None or isinstance(value, TokenPruning):
            return value
        if value is False or (isinstance(value, str) and value.strip().lower() in (OFF, "off", "")):
            return cls(OFF)
        if isinstance(value, str):
            return cls.parse(value, default) if ("," in value or "=" in value) else cls(value.strip())
        if not isinstance(value, dict):
            raise DpbenchError(f"token_pruning must be null, a strategy name, none or a mapping, got {value!r}")
        if "strategy" not in value and (default is None or not default.enabled):
            raise DpbenchError(
                f"token_pruning {value!r} names no strategy, and the method prunes no tokens "
                f"by default: name one (e.g. {EXAMPLE})"
            )
        base = {} if "strategy" in value else default.to_dict()
        try:
            return cls(**{**base, **value})
        except TypeError as e:
            raise DpbenchError(f"bad token_pruning {value!r}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "keep_ratio": self.keep_ratio,
            "keep_count": self.keep_count,
            "seed": self.seed,
        }

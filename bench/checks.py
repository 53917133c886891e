"""Checks of untyped values (spec files, `--option KEY=VALUE`) shared by the spec and its parts."""

from __future__ import annotations

import math
from typing import Any

from dpbench.errors import DpbenchError


def check_fraction(name: str, value: Any) -> float:
    """A ratio in (0, 1], as a float. Values arrive untyped (`--option update_keep=abc`, YAML's
    `true`): text or a boolean is refused, not converted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise DpbenchError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


# Seeds go to torch (manual_seed: -2**63 .. 2**64 - 1), numpy (SeedSequence: >= 0) and Python's
# random: 0 .. 2**63 - 1 suits all, and leaves room for the seeds derived by adding to it.
SEED_LIMIT = 2**63
# steps, batch sizes, example and canary counts: no run reaches it, and libraries index in int32
COUNT_LIMIT = 2**31


def check_seed(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DpbenchError(f"{name} must be an integer, got {value!r}")
    if not 0 <= value < SEED_LIMIT:
        raise DpbenchError(
            f"{name} must lie in 0 .. 2**63 - 1 = {SEED_LIMIT - 1} (what torch's and numpy's generators "
            f"both take), got {shown(value)}"
        )
    return value


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """An integer in minimum .. 2**31 - 1: text, a boolean or a float is refused, not converted."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < COUNT_LIMIT:
        raise DpbenchError(f"{name} must be an integer in {minimum} .. 2**31 - 1, got {shown(value)}")
    return value


def finite(value: Any) -> bool:
    """A number that is a finite float, or an int that converts to one (YAML reads 1e999 as text,
    but 10**400 written out as an int)."""
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        return False


def shown(value: Any) -> str:
    """`value` for a message: an integer of hundreds of digits shortened."""
    text = repr(value)
    return f"{text[:20]}... ({len(text)} characters)" if len(text) > 40 else text

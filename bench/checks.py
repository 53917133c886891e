"""Checks of untyped values (spec files, `--option KEY=VALUE`) shared by the spec and its parts."""

from __future__ import annotations

from typing import Any

from dpbench.errors import DpbenchError


def check_fraction(name: str, value: Any) -> float:
    """A ratio in (0, 1], as a float. Values arrive untyped (`--option update_keep=abc`, YAML's
    `true`): text or a boolean is refused, not converted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise DpbenchError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)

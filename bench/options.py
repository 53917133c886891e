"""KEY=VALUE pairs, as `--option` and `dpbench bench`'s method entries take them; values are
YAML scalars ("0.25" -> 0.25, "true" -> True, "null" -> None, "merge" -> "merge")."""

from __future__ import annotations

from typing import Any, Iterable

import yaml

from dpbench.errors import DpbenchError
from dpbench.files import find_problem


def parse_pairs(pairs: Iterable[str], where: str) -> dict[str, Any]:
    """`where` names the input in errors (e.g. "--option", "method entry 'dpsgd:x'")."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = (s.strip() for s in pair.partition("="))
        if not sep or not key:
            raise DpbenchError(f"{where} takes KEY=VALUE, got {pair!r}")
        if key in out:
            raise DpbenchError(f"{where} sets {key!r} twice")
        try:
            out[key] = yaml.safe_load(value)
        except (yaml.YAMLError, RecursionError):  # RecursionError: nested thousands deep
            raise DpbenchError(f"{where}: cannot read the value of {key!r}") from None
        problem = find_problem(out[key], max_values=len(value) + 1)  # NaN, or nested past any use
        if problem is not None:
            raise DpbenchError(f"{where}: the value of {key!r}: {problem[1]}")
    return out

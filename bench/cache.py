"""Where dpbench keeps what it builds once: the embedded data, the pre-trained model, and the
answers of costly pure functions (σ's calibration, the f-DP audit's planned guess count)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, TypeVar

from dpbench.files import write_json_atomic

T = TypeVar("T")

ENV_VAR = "DPBENCH_CACHE"


def cache_dir() -> Path:
    root = os.environ.get(ENV_VAR) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dpbench"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def remembered(file: str, key: list, compute: Callable[[], T], kind: type = float) -> T:
    """`compute()`, kept in `$DPBENCH_CACHE/<file>` under `key` (a JSON list of everything the
    answer depends on): later calls with the same key read it. An unreadable file or an entry
    not of `kind` is computed again; an exception of `compute` leaves the file as it was. Two
    processes writing at once may keep one's entry only: the other's is computed again later."""
    name = json.dumps(key)
    try:
        path = cache_dir() / file
    except OSError:  # no cache can be made (a read-only home): nothing is kept, the run goes on
        return compute()
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    if isinstance(known.get(name), kind) and not isinstance(known.get(name), bool):
        return known[name]
    value = compute()
    try:
        write_json_atomic(path, {**known, name: value})
    except OSError:  # a read-only cache: computed again next time, the run goes on
        pass
    return value

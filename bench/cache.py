"""Where dpbench keeps what it builds once: the embedded data and the pre-trained model."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "DPBENCH_CACHE"


def cache_dir() -> Path:
    root = os.environ.get(ENV_VAR) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dpbench"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path

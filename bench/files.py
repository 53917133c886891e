"""Text files a user hands dpbench (data annotations, spec and sweep files, results): each read
one way, and every way it can fail (missing, unreadable, not UTF-8, not JSON) is one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dpbench.errors import DpbenchError


def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise DpbenchError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise DpbenchError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_json(path: str | Path, fix: str = "re-download it") -> Any:
    """`fix` says what to do about a file that is not valid JSON."""
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DpbenchError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); {fix}") from None

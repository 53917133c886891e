"""Result files: JSON Schema validation (every error, with its JSON path) and atomic writes."""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from dpbench.errors import DpbenchError


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads(resources.files("dpbench").joinpath("schema/result.schema.json").read_text())


def validation_errors(result: Any) -> list[str]:
    """Every schema violation as `$.json.path: message`, in document order."""
    validator = jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(result), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{e.json_path}: {e.message}" for e in errors]


def load_result(path: str | Path) -> dict[str, Any]:
    """Read and validate one result file; a DpbenchError lists every problem in it."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except OSError as e:
        raise DpbenchError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise DpbenchError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    errors = validation_errors(result)
    if errors:
        raise DpbenchError(f"{path}: {len(errors)} schema error(s):\n  " + "\n  ".join(errors))
    return result


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write via a temp file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    """Validate, then write atomically: an invalid result is a bug and is never written."""
    errors = validation_errors(result)
    if errors:
        raise RuntimeError("refusing to write an invalid result:\n  " + "\n  ".join(errors))
    write_json_atomic(path, result)

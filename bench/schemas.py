"""The packaged JSON Schemas (run results, `dpbench bench` outputs, unlearning results) and the
files checked against them: every error, with its JSON path, on reading and before writing."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

from dpbench.errors import DpbenchError
from dpbench.files import read_json, write_json_atomic

# a document's `kind` -> its schema; a run result has no kind
KINDS = {"dpbench-bench": "bench", "dpbench-unlearn": "unlearn"}


@lru_cache(maxsize=None)
def schema(name: str = "result") -> dict[str, Any]:
    """A packaged schema: `result` (run results), `bench` (`dpbench bench` outputs) or `unlearn`
    (`dpbench unlearn` results)."""
    return json.loads(resources.files("dpbench").joinpath(f"schema/{name}.schema.json").read_text())


@lru_cache(maxsize=None)
def _validator(name: str) -> jsonschema.Draft202012Validator:
    # The bench and unlearn schemas reuse the result schema's definitions by $id; no network lookups.
    registry = Registry().with_resources(
        (schema(n)["$id"], Resource.from_contents(schema(n))) for n in ("result", *KINDS.values())
    )
    return jsonschema.Draft202012Validator(schema(name), registry=registry, format_checker=jsonschema.FormatChecker())


def validation_errors(document: Any, kind: str = "result") -> list[str]:
    """Every violation of the `kind` schema as `$.json.path: message`, in document order."""
    errors = sorted(_validator(kind).iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{e.json_path}: {e.message}" for e in errors]


@lru_cache(maxsize=None)
def _spec_validator() -> jsonschema.Draft202012Validator:
    """The result schema's `spec` part on its own: what a result would reject, a spec may not start."""
    result = schema("result")
    part = {"$schema": result["$schema"], "$defs": result.get("$defs", {}), **result["properties"]["spec"]}
    return jsonschema.Draft202012Validator(part)


def spec_errors(spec: Any) -> list[str]:
    """Every violation of the result schema's rules for `spec`, as `$.path: message`."""
    errors = sorted(_spec_validator().iter_errors(spec), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{e.json_path}: {e.message}" for e in errors]


def document_kind(document: Any) -> str:
    """Which schema a file answers to: `dpbench bench` and `dpbench unlearn` outputs say so; anything
    else is a run result."""
    kind = document.get("kind") if isinstance(document, dict) else None
    return KINDS.get(kind, "result") if isinstance(kind, str) else "result"


# what each kind of file is, for a message when another was expected
KIND_NAMES = {"result": "a run's result", "bench": "a `dpbench bench` output", "unlearn": "an unlearning run's result"}


def load_result(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """Read and validate one result, `dpbench bench` or unlearning file (only of `kind`, when
    given); a DpbenchError lists every problem in it."""
    path = Path(path)
    result = read_json(path, fix="it is not a dpbench result")
    found = document_kind(result)
    if kind is not None and found != kind:
        raise DpbenchError(f"{path} is {KIND_NAMES[found]}, not {KIND_NAMES[kind]}")
    errors = validation_errors(result, found)
    if errors:
        raise DpbenchError(f"{path}: {len(errors)} schema error(s):\n  " + "\n  ".join(errors))
    return result


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    """Validate, then write atomically: an invalid result is a bug and is never written."""
    errors = validation_errors(result, document_kind(result))
    if errors:
        raise RuntimeError("refusing to write an invalid result:\n  " + "\n  ".join(errors))
    write_json_atomic(path, result)

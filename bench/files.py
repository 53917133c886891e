"""Files a user hands dpbench (spec and sweep files, results, data annotations and records): each
read one way, and every way it can fail is one line; and what dpbench writes, written whole.

One reader refuses what no dpbench file is: anything but a regular file (a device such as
/dev/zero, a FIFO, a folder), a file over the size cap (`$DPBENCH_MAX_FILE_BYTES` sets it),
text that is not UTF-8, JSON/YAML/TOML that does not parse or nests deeper than `MAX_DEPTH`
levels, and NaN or ±Infinity anywhere in it (JSON has neither; Python's reader accepts them),
named by its JSON path (`$.utility.metrics.accuracy`). `find_problem` is the same check for
what dpbench writes: `write_json_atomic` refuses what the reader would, and every write goes
through a temp file and a rename (`write_atomic`), so no reader sees half a file.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import stat
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dpbench.errors import DpbenchError

LIMIT_ENV = "DPBENCH_MAX_FILE_BYTES"
MAX_BYTES = 64 * 2**20  # spec, sweep and result files: a few KB each
DATA_MAX_BYTES = 4 * 2**30  # dataset annotations and parquet shards (VQAv2's annotations: ~330 MB)
MAX_DEPTH = 64  # nesting levels: results nest 6 deep; parsers and validators recurse per level
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_+-]*")


class FileProblem(DpbenchError):
    """A problem at one place of a file: `where` is its JSON path (`$`: the file as a whole) and
    `problem` the message without the file's name, for reports that name the file themselves."""

    def __init__(self, message: str, where: str = "$", problem: str | None = None):
        super().__init__(message)
        self.where, self.problem = where, problem or message


def max_bytes(default: int = MAX_BYTES) -> int:
    """The size cap: `default`, or `$DPBENCH_MAX_FILE_BYTES` when set."""
    raw = os.environ.get(LIMIT_ENV, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise DpbenchError(f"${LIMIT_ENV} must be a positive number of bytes, got {raw!r}")
    return value


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        raise DpbenchError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:  # a NUL byte in the name
        raise DpbenchError(f"cannot read {path}: {e}") from None


def _check_regular(path: Path, st: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise DpbenchError(f"{path} is not a regular file")
    if st.st_size > limit:
        _too_big(path, limit)


def _too_big(path: Path, limit: int) -> None:
    raise DpbenchError(
        f"{path} is larger than the {limit} bytes dpbench reads from one file; "
        f"set {LIMIT_ENV} to a larger number of bytes to read it"
    )


def check_file(path: str | Path, limit: int = DATA_MAX_BYTES) -> Path:
    """A file another library reads (a parquet shard, an image): regular and under the cap."""
    path = Path(path)
    _check_regular(path, _stat(path), max_bytes(limit))
    return path


def read_bytes(path: str | Path, limit: int = MAX_BYTES) -> bytes:
    """The file's bytes: a regular file of at most the cap (`limit`, or `$DPBENCH_MAX_FILE_BYTES`)."""
    path, limit = Path(path), max_bytes(limit)
    _check_regular(path, _stat(path), limit)  # before opening: opening a FIFO or a device may block
    try:  # O_NONBLOCK: should the name be swapped for a FIFO meanwhile, open does not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise DpbenchError(f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        _check_regular(path, os.fstat(fd), limit)
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise DpbenchError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > limit:  # it grew, or a file whose size the kernel does not know
        _too_big(path, limit)
    return data


def read_text(path: str | Path, limit: int = MAX_BYTES) -> str:
    path = Path(path)
    data = read_bytes(path, limit)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DpbenchError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as Path.read_text


def read_json(path: str | Path, fix: str = "re-download it", limit: int = MAX_BYTES) -> Any:
    """`fix` says what to do about a file that is not valid JSON; `limit` is the default size cap."""
    path = Path(path)
    text = read_text(path, limit)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        problem = f"not valid JSON ({e.msg} at line {e.lineno})"
        raise FileProblem(f"{path} is {problem}; {fix}", "$", problem) from None
    except RecursionError:
        raise _too_deep(path, "$") from None
    check_values(data, path)
    return data


def read_config(path: str | Path, limit: int = MAX_BYTES) -> Any:
    """A YAML file, or TOML by its `.toml` suffix (spec and sweep files)."""
    path = Path(path)
    text = read_text(path, limit)
    toml = path.suffix == ".toml"
    try:
        data = tomllib.loads(text) if toml else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
        message = " ".join(str(e).split())  # PyYAML's messages span lines
        raise FileProblem(f"cannot read config {path}: {message}", "$", message) from None
    except RecursionError:
        raise _too_deep(path, "$") from None
    # a YAML alias repeats a value without repeating its text: more values than characters is one
    check_values(data, path, max_values=len(text) + 1)
    return data


def check_values(data: Any, source: str | Path, max_values: int | None = None) -> Any:
    """`data` read from `source`, or a FileProblem naming the first value dpbench refuses."""
    problem = find_problem(data, max_values=max_values)
    if problem is not None:
        where, what = problem
        raise FileProblem(f"{source}: {where}: {what}", where, what)
    return data


def _too_deep(source: str | Path, where: str) -> FileProblem:
    what = f"nested deeper than {MAX_DEPTH} levels, more than dpbench reads"
    return FileProblem(f"{source}: {where}: {what}", where, what)


def _non_finite(value: float) -> str:
    return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"


def _is_float(value: Any) -> bool:
    """A Python or numpy float (numpy's float32 is no `float`)."""
    return isinstance(value, (float, np.floating))


def find_problem(data: Any, max_depth: int = MAX_DEPTH, max_values: int | None = None) -> tuple[str, str] | None:
    """The first value of `data` dpbench refuses, as (JSON path, what is wrong); None if none.
    Iterative, so no nesting depth can exhaust the stack; `max_values` bounds the values seen."""
    containers = (dict, list, tuple)
    stack: list[tuple[Any, int, tuple | None]] = [(data, 0, None)]  # (value, depth, (parent trail, key))
    seen = 0
    while stack:
        node, depth, trail = stack.pop()
        if _is_float(node):
            if not math.isfinite(node):
                return json_path(
                    trail
                ), f"{_non_finite(node)} is not a number JSON can hold: dpbench refuses NaN and ±Infinity"
            continue
        if not isinstance(node, containers):
            continue
        if depth >= max_depth:
            return json_path(trail, shown=4), f"nested deeper than {max_depth} levels, more than dpbench reads"
        items = node.items() if isinstance(node, dict) else enumerate(node)
        nested = []
        for key, value in items:
            if isinstance(value, containers):
                nested.append((value, depth + 1, (trail, key)))
            elif _is_float(value) and not math.isfinite(value):
                nested.append((value, depth + 1, (trail, key)))  # reported in document order below
        seen += len(node)
        if max_values is not None and seen > max_values:
            return json_path(trail), f"holds more than {max_values} values (a YAML alias repeated many times?)"
        stack.extend(reversed(nested))  # document order: the first problem is the one reported
    return None


def json_path(trail: tuple | None, shown: int | None = None) -> str:
    """`$.a[0].b` for the keys of `trail`; with `shown`, its first `shown` keys and an ellipsis."""
    keys = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    keys.reverse()
    parts = ["$"]
    if shown is not None and len(keys) > shown:
        keys, tail = keys[:shown], "..."
    else:
        tail = ""
    for key in keys:
        if isinstance(key, int) and not isinstance(key, bool):
            parts.append(f"[{key}]")
        elif isinstance(key, str) and _KEY.fullmatch(key):
            parts.append(f".{key}")
        else:
            parts.append(f"[{json.dumps(key) if isinstance(key, str) else repr(key)}]")
    return "".join(parts) + tail


def write_atomic(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """Write via a temp file in the same folder and rename: readers never see half a file, and a
    crash leaves none. The file gets the temp file's 0600 unless `mode` says otherwise."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """`data` as indented JSON, written atomically (its folder made if need be). What dpbench would
    refuse to read (NaN, ±Infinity) is refused here, naming where it is."""
    path = Path(path)
    problem = find_problem(data)
    if problem is not None:
        raise DpbenchError(f"refusing to write {path}: {problem[0]}: {problem[1]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    write_atomic(path, text.encode("utf-8"))


def write_npz(path: str | Path, **arrays) -> None:
    """`np.savez` to `path` (its name as given), whole or absent, through `write_atomic`."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())

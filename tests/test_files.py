"""The one reader of user files (dpbench.files) and the writer's matching check: anything but a
regular file, a file over the size cap, nesting past 64 levels and NaN or ±Infinity are each one
DpbenchError naming the file (and the JSON path), never a hang, a RecursionError or a "nan"."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from dpbench.errors import DpbenchError
from dpbench.files import (
    DATA_MAX_BYTES,
    LIMIT_ENV,
    MAX_DEPTH,
    FileProblem,
    check_file,
    find_problem,
    read_config,
    read_json,
    read_text,
    write_json_atomic,
)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("kind", ["folder", "fifo", "device"])
def test_only_regular_files_are_read(tmp_path, kind):
    path = {"folder": tmp_path, "fifo": tmp_path / "fifo.yaml", "device": Path("/dev/zero")}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # opened for reading, a FIFO would wait for a writer for ever
    started = time.monotonic()
    for read in (read_text, read_json, read_config, check_file):
        with pytest.raises(DpbenchError, match=f"^{path} is not a regular file$"):
            read(path)
    assert time.monotonic() - started < 5


def test_the_size_cap_names_the_variable_that_raises_it(tmp_path, monkeypatch):
    path = tmp_path / "spec.yaml"
    path.write_text("method: dpsgd\n" + "#" * 100)
    monkeypatch.setenv(LIMIT_ENV, "64")
    with pytest.raises(DpbenchError, match=f"larger than the 64 bytes .* set {LIMIT_ENV}"):
        read_config(path)
    with pytest.raises(DpbenchError, match=LIMIT_ENV):
        check_file(path)
    monkeypatch.setenv(LIMIT_ENV, "1000")
    assert read_config(path) == {"method": "dpsgd"}
    monkeypatch.setenv(LIMIT_ENV, "lots")
    with pytest.raises(DpbenchError, match="must be a positive number of bytes"):
        read_config(path)
    monkeypatch.delenv(LIMIT_ENV)
    assert DATA_MAX_BYTES > 330 * 2**20  # real annotation files (VQAv2's: ~330 MB) fit the data cap


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 2_000, 200_000])  # 2,000 and more: past Python's recursion
def test_deep_nesting_is_one_problem_never_a_recursion_error(tmp_path, depth):
    for name, text in (
        ("r.json", nested(depth)),
        ("s.yaml", nested(depth)),
        ("s.toml", "a = " + nested(depth)),
        ("t.json", '{"a":' * depth + "1" + "}" * depth),
    ):
        path = tmp_path / name
        path.write_text(text)
        read = read_json if name.endswith(".json") else read_config
        with pytest.raises(FileProblem, match=f"nested deeper than {MAX_DEPTH} levels"):
            read(path)


def test_nesting_up_to_the_limit_is_read(tmp_path):
    (tmp_path / "ok.json").write_text(nested(MAX_DEPTH))
    assert read_json(tmp_path / "ok.json") is not None


@pytest.mark.parametrize(
    "text, where, what",
    [
        ('{"utility": {"metrics": {"accuracy": NaN}}}', "$.utility.metrics.accuracy", "NaN"),
        ('{"a": [1, 2, Infinity]}', "$.a[2]", "Infinity"),
        ('{"a": {"x y": -Infinity}}', '$.a["x y"]', "-Infinity"),
        ('{"a": [{"b": 1e999}]}', "$.a[0].b", "Infinity"),  # Python's reader makes inf of it
    ],
)
def test_nan_and_infinity_are_refused_with_their_json_path(tmp_path, text, where, what):
    path = tmp_path / "result.json"
    path.write_text(text)
    with pytest.raises(FileProblem) as info:
        read_json(path)
    assert info.value.where == where and info.value.problem.startswith(f"{what} is not a number JSON can hold")
    assert str(info.value).startswith(f"{path}: {where}: {what}") and "\n" not in str(info.value)


def test_yaml_and_toml_nan_infinity_and_alias_bombs_are_refused(tmp_path):
    laughs = "a: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi")
    )  # 9**9 values from a few hundred characters
    cases = {
        "a.yaml": ("privacy: {epsilon: .nan}\n", r"\$\.privacy\.epsilon: NaN"),
        "b.toml": ("[training]\nlr = inf\n", r"\$\.training\.lr: Infinity"),
        "c.yaml": ("a: &a [*a]\n", "holds more than|nested deeper than"),  # a list that holds itself
        "d.yaml": (laughs, "holds more than"),
    }
    for name, (text, fragment) in cases.items():
        (tmp_path / name).write_text(text)
        started = time.monotonic()
        with pytest.raises(FileProblem, match=fragment):
            read_config(tmp_path / name)
        assert time.monotonic() - started < 5


def test_the_writer_refuses_what_the_reader_would(tmp_path):
    path = tmp_path / "result.json"
    with pytest.raises(DpbenchError, match=rf"refusing to write {path}: \$\.utility\.metrics\.accuracy: NaN"):
        write_json_atomic(path, {"utility": {"metrics": {"accuracy": math.nan}}})
    assert list(tmp_path.iterdir()) == []  # no file, no temporary file
    write_json_atomic(path, {"utility": {"metrics": {"accuracy": 0.5}}})
    assert json.loads(path.read_text()) == {"utility": {"metrics": {"accuracy": 0.5}}}


def test_find_problem_reports_the_first_in_document_order():
    assert find_problem({"a": [1.0, {"b": "x"}], "c": 2}) is None
    assert find_problem({"a": [0.5, math.inf], "b": math.nan})[0] == "$.a[1]"
    assert find_problem([[]] * 3, max_values=2) is not None  # shared values count each time


def test_numpy_non_finite_values_are_named_too(tmp_path):
    """Figures computed with numpy (float64, float32) that are not finite are refused by name and path."""
    import numpy as np

    from dpbench.errors import DpbenchError
    from dpbench.files import find_problem, write_json_atomic

    assert find_problem({"a": [1.0, np.float64("nan")]}) == (
        "$.a[1]",
        "NaN is not a number JSON can hold: dpbench refuses NaN and ±Infinity",
    )
    assert find_problem({"b": np.float32("-inf")})[1].startswith("-Infinity")
    with pytest.raises(DpbenchError, match=r"\$\.x: Infinity"):
        write_json_atomic(tmp_path / "r.json", {"x": np.float64("inf")})
    assert list(tmp_path.iterdir()) == []  # nothing half-written

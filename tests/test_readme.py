"""The README's commands exist as written: every `dpbench ...` line of its command blocks parses
(command names, options and their values, with each path it names made in a temporary folder),
and every `make` target it names is in the Makefile. What they do is each command's own tests'
business; this catches a README that drifted from the CLI."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import click
import pytest

from dpbench.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[list[str]]:
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if not line.startswith("dpbench "):
                continue
            words = line.split()[1:]
            # `list a|b|c` is three commands; `[--check]` is the command with and without it
            choices = []  # per word, what it stands for: every combination is a command
            for w in words:
                if "|" in w and not w.startswith("-"):
                    choices.append([[part] for part in w.split("|")])
                elif w.startswith("[") and w.endswith("]"):
                    choices.append([[], [w[1:-1]]])
                else:
                    choices.append([[w]])
            commands += [[x for part in combo for x in part] for combo in itertools.product(*choices)]
    return commands


def test_the_readme_has_a_command_block():
    names = {c[0] for c in readme_commands()}
    assert {"run", "list", "validate", "audit", "sweep", "leaderboard", "bench", "unlearn"} <= names


def parse(args: list[str]) -> None:
    parent = cli.make_context("dpbench", list(args))
    command = cli.get_command(parent, args[0])
    assert command is not None, f"no command {args[0]!r}"
    if isinstance(command, click.Group):
        assert command.get_command(parent, args[1]) is not None, f"no command {args[0]} {args[1]!r}"
    command.make_context(args[0], list(args[1:]), parent=parent)  # parses; runs nothing


@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: " ".join(a))
def test_every_readme_command_parses(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the paths it names, made here: a placeholder is a folder or file like any
    for word in args[1:]:
        if "/" in word or word.endswith((".yaml", ".json", ".toml")):
            for path in tmp_path.glob(word) if "*" in word else [tmp_path / word]:
                if path.suffix:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text("{}")
                else:
                    path.mkdir(parents=True, exist_ok=True)
    if any("*" in w for w in args):
        (tmp_path / "runs" / "r").mkdir(parents=True)
        (tmp_path / "runs" / "r" / "result.json").write_text("{}")
        args = [str(p) for w in args for p in (sorted(tmp_path.glob(w)) if "*" in w else [w])]
    parse(args)


def test_an_unknown_option_or_command_is_caught():
    """The check above can fail: an option or a command the CLI lacks raises."""
    with pytest.raises(click.NoSuchOption):
        parse(["run", "--no-such-option"])
    with pytest.raises(AssertionError):
        parse(["no-such-command"])


def test_every_make_target_the_readme_names_exists():
    makefile = (README.parent / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.M))
    named = set(re.findall(r"^make ([\w-]+)", README.read_text(), flags=re.M))
    assert named and named <= targets

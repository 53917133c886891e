"""`dpbench leaderboard`: validate every result file, then render or check leaderboard/."""

from __future__ import annotations

from pathlib import Path

import click

from dpbench.leaderboard.benchmarks import DEFAULT_DIR as DEFAULT_BENCHMARKS
from dpbench.leaderboard.render import InvalidResults, build, stale_files, write

DEFAULT_RESULTS = Path("leaderboard/results")
DEFAULT_OUT = Path("leaderboard")


def results_dirs(results: tuple[str, ...], include_runs: tuple[str, ...]) -> list[Path]:
    if results:
        dirs = [Path(d) for d in results]
    else:  # a fresh checkout may have no submissions yet: an empty leaderboard, not an error
        dirs = [DEFAULT_RESULTS] if DEFAULT_RESULTS.is_dir() else []
    return dirs + [Path(d) for d in include_runs]


def folders_option(flag: str, help: str):
    """A repeatable folder flag."""
    return click.option(flag, multiple=True, type=click.Path(file_okay=False), help=help)


@click.command("leaderboard")
@folders_option(
    "--results", "Folder of committed results (*.json, */result.json); repeatable. [default: leaderboard/results]"
)
@folders_option("--include-runs", "Also include run folders from this directory (e.g. runs); repeatable.")
@folders_option(
    "--benchmarks", "Folder of `dpbench bench` outputs (*.json); repeatable. [default: benchmarks, if present]"
)
@click.option(
    "--out",
    "out",
    default=str(DEFAULT_OUT),
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where README.md and index.html are written.",
)
@click.option(
    "--check", is_flag=True, help="Write nothing; exit 1 if a result is invalid or the files are out of date."
)
def leaderboard_command(
    results: tuple[str, ...], include_runs: tuple[str, ...], benchmarks: tuple[str, ...], out: str, check: bool
) -> None:
    """Validate result and benchmark files and render the leaderboard (Markdown, HTML and plots)."""
    if not benchmarks:
        benchmarks = (str(DEFAULT_BENCHMARKS),) if DEFAULT_BENCHMARKS.is_dir() else ()
    try:
        board = build(results_dirs(results, include_runs), benchmarks)
    except InvalidResults as e:
        click.echo(f"error: {len(e.errors)} problem(s) in result or benchmark files:", err=True)
        for line in e.errors:
            click.echo(f"  {line}", err=True)
        raise SystemExit(1) from None
    for line in board.duplicates:
        click.echo(f"note: skipped duplicate {line}", err=True)
    summary = f"{board.n_results} result(s), {len(board.rows)} configuration(s)"
    if check:
        stale = stale_files(board, out)
        if stale:
            click.echo(
                f"error: leaderboard out of date: {', '.join(stale)}; run `dpbench leaderboard` and commit the result",
                err=True,
            )
            raise SystemExit(1)
        click.echo(f"leaderboard up to date ({summary})")
        return
    written = write(board, out)
    click.echo(f"wrote {', '.join(written)} ({summary})")

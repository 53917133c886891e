"""`dpbench unlearn`: the command line of an unlearning run."""

from __future__ import annotations

from pathlib import Path

import click

from dpbench.errors import DpbenchError
from dpbench.options import parse_pairs
from dpbench.run_folder import check_runs_dir


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--method", required=True, help="Unlearning method (see `dpbench list unlearners`).")
@click.option(
    "--forget",
    required=True,
    metavar="REQUEST",
    help="What to forget: examples:K, examples:P% (of the parent's training examples, drawn with --seed) or "
    "concept:NAME (a digit on the embedded samples, FIELD=VALUE of the examples' metadata on real data).",
)
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Method option (repeatable).")
@click.option("--seed", type=int, default=0, show_default=True, help="Draws the forget set, the batches, the init.")
@click.option("--steps", type=int, help="Optimiser steps of a gradient method. [default: 30]")
@click.option("--batch-size", type=int, help="Forget and retain examples per step, each. [default: 8]")
@click.option("--lr", type=float, help="Adam's learning rate. [default: the method's]")
@click.option(
    "--audit-pairs",
    type=int,
    help="Also audit it: this many shadow pairs (trained on the forget set then unlearned, and retrained "
    "without it), per-example U-LiRA, PrivLeak; 2 trainings of the parent's recipe per pair, shared by every "
    "method on the same parent, request and seed. [default: no audit]",
)
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
def unlearn_command(run_dir, method, forget, options, seed, steps, batch_size, lr, audit_pairs, runs_dir) -> None:
    """Make a finished run (saved with --save-checkpoint) forget part of its training data, and
    measure it beside the parent and the model retrained without it: runs/unlearn-<method>-<id>/."""
    if audit_pairs is not None and audit_pairs < 3:  # before the parent or torch loads
        raise DpbenchError(f"--audit-pairs must be at least 3 (leave one pair out, fit on the rest), got {audit_pairs}")
    check_runs_dir(runs_dir)
    from dpbench.unlearning.run import make_spec, unlearn
    from dpbench.unlearning.summary import print_unlearn_summary

    opts = parse_pairs(options, "--option") if options else {}
    spec = make_spec(run_dir, method, forget, opts, seed, steps=steps, batch_size=batch_size, lr=lr)
    if audit_pairs is None:
        result = unlearn(spec, Path(run_dir), Path(runs_dir))
    else:
        from dpbench.unlearning.audit import audit

        result = audit(spec, Path(run_dir), Path(runs_dir), audit_pairs)
    print_unlearn_summary(result)

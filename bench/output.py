"""What a run prints: dpbench's own lines, not third-party warnings and bars.

Third-party notices dpbench understands are silenced here and said once in dpbench's words
where they matter (the secure-RNG one in `methods/dpsgd.py`, an RDP grid still too small in
`privacy.py`); `dpbench --verbose` (or DPBENCH_VERBOSE=1, which subprocesses inherit) shows
them all as the libraries print them.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "DPBENCH_VERBOSE"

# the starts of warnings that are understood
UNDERSTOOD = (
    # torch, on Opacus' hooks of a first layer whose input needs no gradient: per-sample gradients are right
    "Full backward hook is firing when gradients are computed with respect to module outputs",
    "Secure RNG turned off",  # Opacus; said by dpbench, with how to turn it on
    "Optimal order is the largest alpha",  # Opacus; dpbench passes a wider grid and says when it is not enough
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    if on:
        os.environ[VERBOSE_ENV] = "1"  # inherited by the model build and a sweep's runs


_quieted = False


def quiet_third_party() -> None:
    """Silence understood warnings and transformers' per-load bars, unless verbose (once per process:
    every model load calls it, and each call would add the filters again)."""
    global _quieted
    if verbose() or _quieted:
        return
    _quieted = True
    for message in UNDERSTOOD:
        warnings.filterwarnings("ignore", message=message)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


# set by `dpbench run --nproc` for the ranks it launches (it checked the inputs and holds the lock)
LAUNCHED_ENV = "DPBENCH_LAUNCHED_BY_DPBENCH"


def launched_rank() -> bool:
    """A training process `dpbench run --nproc` started: its launcher already said the data notice."""
    return os.environ.get(LAUNCHED_ENV) == "1"


def secondary_rank() -> bool:
    """A training process other than rank 0 (torchrun sets RANK): it prints nothing of its own."""
    return os.environ.get("RANK", "0") != "0"


def note(line: str) -> None:
    """One line of dpbench's own on stderr (rank 0's only, across processes)."""
    import click

    if not secondary_rank():
        click.echo(f"note: {line}", err=True)

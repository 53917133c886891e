"""The load path every task shares: a local copy of the real dataset (`--data-dir`, or the
task's environment variable), else the embedded sample in the same layout, read by the same
reader and labelled as what it is."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from dpbench.errors import DpbenchError
from dpbench.examples import Example
from dpbench.files import check_file
from dpbench.output import launched_rank, secondary_rank

T = TypeVar("T")


def read_dataset(
    data_dir: str | None, env_var: str, read: Callable[[Path], T], embedded: Callable[[], Path], dataset: str
) -> tuple[T, str, str | None]:
    """(what `read` gives, source, resolved local path or None). `embedded()` builds the sample once."""
    data_dir = data_dir or os.environ.get(env_var)
    if data_dir:
        return read(Path(data_dir)), "local", str(Path(data_dir).resolve())
    root = embedded()
    if not (secondary_rank() or launched_rank()):  # once per run, not once per training process
        print(
            f"Notice: no {dataset} data given (--data-dir or ${env_var}); using the embedded digit-image sample "
            f"in {dataset}'s format. It is NOT {dataset}; results say so."
        )
    return read(root), "embedded-sample", None


def require_examples(splits: dict[str, Sequence[Example]], what: str) -> None:
    """Every named split holds at least one example; `what` names the dataset's unit of one."""
    for name, examples in splits.items():
        if not examples:
            raise DpbenchError(f"the {name} split has no {what}")


def generate_all(model, examples: list[Example], batch_size: int, max_new_tokens: int) -> list[str]:
    """Greedy generations for every example, a batch at a time."""
    predictions: list[str] = []
    for i in range(0, len(examples), batch_size):
        predictions += model.generate(examples[i : i + batch_size], max_new_tokens)
    return predictions


def check_image(path: Path) -> None:
    """Fail at load time, not mid-training, on an image that cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    check_file(path)  # not a FIFO or a device, which PIL would wait on or read without end
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, UnidentifiedImageError) as e:
        raise DpbenchError(f"unreadable image {path}: {e}") from None

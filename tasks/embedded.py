"""What the three embedded samples (ScienceQA, VQAv2 and COCO Captions layouts, built from
scikit-learn's digit images) share: a versioned, idempotent build over the shuffled private
digits, and a train/val split of them."""

from __future__ import annotations

import fcntl
import json
import random
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from dpbench.files import write_json_atomic
from dpbench.tasks.digits import Digit, private_digits

# (root, split, digits of that split, rng) -> how many records it wrote
SplitWriter = Callable[[Path, str, list[Digit], random.Random], int]


def build_sample(
    root: Path,
    version: int,
    write: Callable[[Path, list[Digit], random.Random], int],
    *,
    seed: int = 0,
    count: str = "n",
) -> Path:
    """Write a sample under `root` with `write(root, shuffled digits, rng)`, unless a finished build
    of this `version` is there (its marker file, written last, records `count` records)."""
    marker = root / "embedded.json"

    def built() -> bool:
        return marker.exists() and json.loads(marker.read_text()).get("version") == version

    if built():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time: the ranks of a run, or a sweep's parallel runs, start together
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if built():  # another process built it while this one waited
            return root
        rng = random.Random(seed)
        digits = private_digits()
        rng.shuffle(digits)
        n = write(root, digits, rng)
        write_json_atomic(marker, {"version": version, "source": "scikit-learn load_digits", count: n})
    return root


def save_coco_images(root: Path, split: str, digits: list[Digit]) -> Iterator[tuple[Digit, int, str, Image.Image]]:
    """Each digit's image saved as `{split}2014/COCO_{split}2014_{id:012d}.png` (COCO's names, PNG for
    lossless digits), yielded as (digit, image id, file name, image) once it is on disk."""
    folder = root / f"{split}2014"
    folder.mkdir(parents=True, exist_ok=True)
    for d in digits:
        image_id = d.index + 1
        file_name = f"COCO_{split}2014_{image_id:012d}.png"
        image = d.image()
        image.save(folder / file_name)
        yield d, image_id, file_name, image


def train_and_val(write_split: SplitWriter, train_fraction: float) -> Callable[[Path, list[Digit], random.Random], int]:
    """A `build_sample` writer: the first `train_fraction` of the digits as train, the rest as val."""

    def write(root: Path, digits: list[Digit], rng: random.Random) -> int:
        n_train = round(train_fraction * len(digits))
        return write_split(root, "train", digits[:n_train], rng) + write_split(root, "val", digits[n_train:], rng)

    return write

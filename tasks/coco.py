"""The COCO 2014 layout that VQAv2 and COCO Captions share: its files, its image folders, and
the split of val2014 into the audit's non-members and the test set (by image, so no image
seen in training or in one half appears in the other)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from dpbench.errors import DpbenchError
from dpbench.examples import Example
from dpbench.tasks.loading import check_image


def find_file(root: Path, name: str) -> Path:
    """`root/name`, else `root/<folder>/name` (e.g. the zips' Questions/ and Annotations/)."""
    for path in [root / name, *sorted(root.glob(f"*/{name}"))]:
        if path.is_file():
            return path
    raise DpbenchError(f"{root} has no {name} (nor one folder below it)")


def coco_image(root: Path, split: str, file_name: str) -> Path:
    """A COCO image in `{split}2014/` (or `images/{split}2014/`); a .png stands in for a .jpg."""
    stem = Path(file_name).stem
    folders = (root / f"{split}2014", root / "images" / f"{split}2014")
    candidates = [f / file_name for f in folders] + [f / f"{stem}{ext}" for f in folders for ext in (".jpg", ".png")]
    for path in candidates:
        if path.is_file():
            check_image(path)
            return path
    raise DpbenchError(f"missing image {file_name}: expected {candidates[0]}")


def coco_file_name(split: str, image_id: int) -> str:
    return f"COCO_{split}2014_{int(image_id):012d}.jpg"


def val_half(image_id) -> str:
    """Which half of val2014 an image belongs to: "nonmembers" or "test" (see the module doc)."""
    return "nonmembers" if hashlib.sha256(str(image_id).encode()).digest()[0] % 2 == 0 else "test"


def split_val(train: list[Example], val: list[Example]) -> tuple[list[Example], list[Example]]:
    """Non-members and test from val, each without an image that training has seen."""
    seen = {e.group for e in train}
    halves: dict[str, list[Example]] = {"nonmembers": [], "test": []}
    for e in val:
        if e.group not in seen:
            halves[val_half(e.group)].append(e)
    return halves["nonmembers"], halves["test"]

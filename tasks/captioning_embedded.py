"""Build the embedded COCO-captions-format sample from scikit-learn's digit images (private pool).

Written in COCO's own layout (`annotations/captions_{split}2014.json`, images in
`{split}2014/`) and read back by the same loader as the real dataset. It is *not* COCO:
results built on it say `dataset.source = "embedded-sample"`.

Every private image (image_id = its scikit-learn row + 1) gets five captions in varied
wording, as five annotators would write them ("A scanned handwritten seven on a dark
background.", "The number 7 written by hand in white.", ...). Pre-training only ever said
"A handwritten digit seven.", to another prompt: the wording of these captions is what
fine-tuning learns; which digit it is, the model already reads. Half the images go to
train2014, half to val2014 (the loader halves val2014 into non-members and test).
"""

from __future__ import annotations

import random
from pathlib import Path

from dpbench.files import write_json_atomic
from dpbench.tasks.digits import WORDS, Digit
from dpbench.tasks.embedded import build_sample, save_coco_images, train_and_val

FORMAT_VERSION = 1
CAPTIONS_PER_IMAGE = 5
TRAIN_FRACTION = 0.5
# {w}: the number as a word, {n}: as a numeral
TEMPLATES = (
    "A handwritten digit {w} on a black background.",
    "The number {n} written by hand in white.",
    "A scanned handwritten {w} on a dark background.",
    "A white {w} drawn on a black square.",
    "A blurry pixelated image of the number {w}.",
    "A low resolution picture of a handwritten {n}.",
    "Close up of the digit {w} written in thick white strokes.",
    "A hand drawn number {n} in white on black.",
    "A handwritten {w} in white ink on a black background.",
    "The digit {n} scribbled in white on a dark square.",
)


def _captions(d: Digit, rng: random.Random) -> list[str]:
    return [t.format(w=WORDS[d.label], n=d.label) for t in rng.sample(TEMPLATES, CAPTIONS_PER_IMAGE)]


def _write_split(root: Path, split: str, digits: list[Digit], rng: random.Random) -> int:
    images, annotations = [], []
    for d, image_id, file_name, image in save_coco_images(root, split, digits):
        images.append(
            {"id": image_id, "file_name": file_name, "width": image.width, "height": image.height, "license": 0}
        )
        for k, caption in enumerate(_captions(d, rng)):
            annotations.append({"image_id": image_id, "id": image_id * 10 + k, "caption": caption})
    write_json_atomic(
        root / "annotations" / f"captions_{split}2014.json",
        {
            "info": {
                "description": "dpbench embedded sample in COCO's captions layout: scikit-learn digit "
                "images. NOT COCO.",
                "version": FORMAT_VERSION,
            },
            "licenses": [{"id": 0, "name": "BSD-3-Clause (scikit-learn digits)"}],
            "images": images,
            "annotations": annotations,
        },
    )
    return len(images)


def build(root: Path, seed: int = 0) -> Path:
    """Write the sample under `root` (idempotent: a finished build is marked by its version)."""
    return build_sample(root, FORMAT_VERSION, train_and_val(_write_split, TRAIN_FRACTION), seed=seed, count="n_images")

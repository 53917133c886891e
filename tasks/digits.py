"""Real images that ship with scikit-learn (the 8x8 handwritten digits), split once into a
*public* pool (pre-training the embedded model) and a *private* pool (the embedded task data).

The two pools never share an image, so the pre-trained base model has seen nothing of the
private task: it is a valid reference model for membership inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

N_PUBLIC = 597  # 1797 images in all: 597 public, 1200 private
PARTITION_SEED = 20231
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Digit:
    index: int  # row in sklearn's load_digits(), stable across versions
    label: int
    pixels: np.ndarray  # 8x8, values 0..16

    def shifted(self, dx: int, dy: int) -> Digit:
        """The same digit moved by whole pixels (zero fill): public-data augmentation."""
        out = np.zeros_like(self.pixels)
        h, w = self.pixels.shape
        src = self.pixels[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
        out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
        return Digit(self.index, self.label, out)

    def image(self, size: int = 32) -> Image.Image:
        """An RGB image, ink bright on dark as in the source data, upscaled without smoothing."""
        grey = (self.pixels * (255.0 / 16.0)).round().astype(np.uint8)
        return Image.fromarray(grey, mode="L").resize((size, size), Image.NEAREST).convert("RGB")


@lru_cache(maxsize=1)
def _all_digits() -> tuple[Digit, ...]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return tuple(Digit(int(i), int(y), x.reshape(8, 8)) for i, (x, y) in enumerate(zip(data.data, data.target)))


def _partition() -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(PARTITION_SEED).permutation(len(_all_digits()))
    return order[:N_PUBLIC], order[N_PUBLIC:]


def public_digits() -> list[Digit]:
    digits = _all_digits()
    return [digits[i] for i in _partition()[0]]


def private_digits() -> list[Digit]:
    digits = _all_digits()
    return [digits[i] for i in _partition()[1]]


def label_of(index: int) -> int | None:
    """The digit shown by row `index` of load_digits() (the embedded samples name their images by it)."""
    digits = _all_digits()
    return digits[index].label if 0 <= index < len(digits) else None

"""What membership-inference attacks read off the models, computed once and shared.

Every attack scores the same examples (members then non-members) from a few signals: the
fine-tuned (target) model's per-example loss, the same under the public base (reference)
model, per-token statistics, and losses with the image blanked out.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dpbench.models.base import VisionLanguageModel
from dpbench.tasks.base import Example


class Signals:
    def __init__(self, target: VisionLanguageModel, reference: VisionLanguageModel, examples: list[Example],
                 work_dir: Path, batch_size: int = 64):
        self.models = {"target": target, "reference": reference}
        self.examples = examples
        self.work_dir = work_dir
        self.batch_size = batch_size
        self._cache: dict[tuple, object] = {}

    def _batches(self, examples: list[Example]):
        for i in range(0, len(examples), self.batch_size):
            chunk = examples[i : i + self.batch_size]
            yield chunk

    def loss(self, role: str = "target", blank_image: bool = False) -> np.ndarray:
        """Per-example mean NLL of the target tokens, shape (n,)."""
        key = ("loss", role, blank_image)
        if key not in self._cache:
            model = self.models[role]
            model.model.eval()
            examples = self._blanked() if blank_image else self.examples
            out = []
            with torch.no_grad():
                for chunk in self._batches(examples):
                    batch = model.encode(chunk, [e.target for e in chunk])
                    out.append(model.per_example_loss(batch).cpu().numpy())
            self._cache[key] = np.concatenate(out)
        return self._cache[key]

    def token_stats(self, role: str = "target") -> list[dict[str, np.ndarray]]:
        """Per example: arrays `logp`, `mu`, `sigma` over its text tokens (prompt + target)."""
        key = ("tokens", role)
        if key not in self._cache:
            model = self.models[role]
            model.model.eval()
            out = []
            for chunk in self._batches(self.examples):
                stats = model.text_token_stats(model.encode(chunk, [e.target for e in chunk]))
                for i in range(len(chunk)):
                    m = stats["mask"][i]
                    out.append({k: stats[k][i][m].cpu().numpy() for k in ("logp", "mu", "sigma")})
            self._cache[key] = out
        return self._cache[key]

    def _blanked(self) -> list[Example]:
        """The same examples with an all-background image of the same size."""
        path = self.work_dir / "blank.png"
        if not path.exists():
            size = Image.open(self.examples[0].image).size if self.examples[0].image else (32, 32)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size, (0, 0, 0)).save(path)
        return [replace(e, image=path) if e.image is not None else e for e in self.examples]

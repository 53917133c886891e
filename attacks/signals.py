"""What membership-inference attacks read off the models, computed once and shared.

Every attack scores the same examples (members then non-members) from a few signals: the
fine-tuned (target) model's per-example loss, the same under the base model (the public
pre-trained model the target was fine-tuned from), per-token statistics, losses with the image
blanked out, and, for the attacks that need them (lira, rmia), losses of reference models
trained on population data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dpbench.examples import Example
from dpbench.models.base import VisionLanguageModel
from dpbench.timing import part

FORWARD = "forward"  # the run's part (dpbench.timing) for the signals' forward passes, shared by the attacks


def per_example_losses(
    model: VisionLanguageModel, examples: list[Example], batch_size: int = 64, targets: list[str] | None = None
) -> np.ndarray:
    """Mean NLL of each example's target tokens (or of `targets`, one per example) under `model`, shape (n,)."""
    model.model.eval()
    targets = [e.target for e in examples] if targets is None else list(targets)
    out = []
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            batch = model.encode(chunk, targets[i : i + batch_size])
            out.append(model.per_example_loss(batch).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class ReferenceLosses:
    """Losses of K reference models that never trained on the audited examples.

    `losses` (K, n) are on the audited examples, by `uids`; `population` are population
    samples (RMIA's z) that neither the target nor any reference trained on, and
    `population_losses` (K, m) the references' losses on them.
    """

    uids: tuple[str, ...]
    losses: np.ndarray
    population: tuple[Example, ...]
    population_losses: np.ndarray
    offline_a: float | None = None  # RMIA's a, estimated on the references' own data (None: its default)
    info: dict = field(default_factory=dict, compare=False)  # how they were trained, for the result

    def __post_init__(self):
        k, m = len(self.losses), len(self.population)
        if self.losses.shape != (k, len(self.uids)) or self.population_losses.shape != (k, m) or k < 1:
            raise ValueError(
                f"reference losses {self.losses.shape} / {self.population_losses.shape} do not "
                f"match {len(self.uids)} examples and {m} population samples"
            )


class Signals:
    def __init__(
        self,
        target: VisionLanguageModel,
        base: VisionLanguageModel,
        examples: list[Example],
        work_dir: Path,
        batch_size: int = 64,
        references: ReferenceLosses | None = None,
        token_stats_for_loss: bool = False,
    ):
        """`token_stats_for_loss`: the target's loss is read off its token-statistics pass (one
        forward for both: set it when an attack reads `token_stats`)."""
        if references is not None and references.uids != tuple(e.uid for e in examples):
            raise ValueError("reference losses were computed on other examples than the ones audited")
        self.models = {"target": target, "base": base}
        self.examples = examples
        self.work_dir = work_dir
        self.batch_size = batch_size
        self.references = references
        self.token_stats_for_loss = token_stats_for_loss
        self._cache: dict[tuple, object] = {}

    def _batches(self, examples: list[Example]):
        for i in range(0, len(examples), self.batch_size):
            chunk = examples[i : i + self.batch_size]
            yield chunk

    def loss(self, role: str = "target", blank_image: bool = False) -> np.ndarray:
        """Per-example mean NLL of the target tokens, shape (n,)."""
        key = ("loss", role, blank_image)
        if key not in self._cache and role == "target" and not blank_image and self.token_stats_for_loss:
            self.token_stats(role)  # fills the key too
        if key not in self._cache:
            with part(FORWARD):
                examples = self._blanked() if blank_image else self.examples
                self._cache[key] = per_example_losses(self.models[role], examples, self.batch_size)
        return self._cache[key]

    def reference_losses(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(K, n) reference losses on the examples, (m,) target and (K, m) reference losses
        on the population samples."""
        if self.references is None:
            raise ValueError("this attack needs reference models (audit.references > 0)")
        key = ("population", "target")
        if key not in self._cache:
            with part(FORWARD):
                self._cache[key] = per_example_losses(
                    self.models["target"], list(self.references.population), self.batch_size
                )
        return self.references.losses, self._cache[key], self.references.population_losses

    def token_stats(self, role: str = "target") -> list[dict[str, np.ndarray]]:
        """Per example: arrays `logp`, `mu`, `sigma` over its text tokens (prompt + target). The
        same pass gives the role's loss (`loss(role)` reads it when not yet computed)."""
        key = ("tokens", role)
        if key not in self._cache:
            model = self.models[role]
            model.model.eval()
            out, losses = [], []
            with part(FORWARD):
                for chunk in self._batches(self.examples):
                    stats = model.text_token_stats(model.encode(chunk, [e.target for e in chunk]))
                    losses.append(stats["loss"].float().cpu().numpy())
                    for i in range(len(chunk)):
                        m = stats["mask"][i]
                        out.append({k: stats[k][i][m].cpu().numpy() for k in ("logp", "mu", "sigma")})
            self._cache[key] = out
            self._cache.setdefault(("loss", role, False), np.concatenate(losses) if losses else np.zeros(0))
        return self._cache[key]

    def _blanked(self) -> list[Example]:
        """The same examples with an all-background image of the same size."""
        path = self.work_dir / "blank.png"
        if not path.exists():
            size = Image.open(self.examples[0].image).size if self.examples[0].image else (32, 32)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", size, (0, 0, 0)).save(path)
        return [replace(e, image=path) if e.image is not None else e for e in self.examples]

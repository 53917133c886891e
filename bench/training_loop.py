"""The skeleton every training loop shares (non-private, DP-SGD, DP-ZO, pre-training): the seed,
a progress bar over the steps, the loss curve and the counts of examples and tokens that
throughput is computed from. A method writes only its own step inside it."""

from __future__ import annotations

import math
import random
from typing import Iterator

import torch

from dpbench.errors import DpbenchError
from dpbench.progress import progress


class TrainingLoop:
    """`loop = TrainingLoop(seed)` seeds torch's global generator (where the method starts);
    `with loop.running(label, steps):` shows the bar; `loop.count(batch)` per forward,
    `loop.end_step(loss)` per optimiser step."""

    def __init__(self, seed: int | None = None):
        if seed is not None:
            torch.manual_seed(seed)
        self.losses: list[float] = []
        self.samples = 0  # examples processed, once per example per forward
        self.tokens = 0  # non-padding input tokens processed, visual tokens included
        self.label = ""
        self._bar = self._task = None

    def running(self, label: str, steps: int) -> TrainingLoop:
        self.label, self._steps = label, steps
        return self

    def __enter__(self) -> TrainingLoop:
        self._bar = progress().__enter__()
        self._task = self._bar.add_task(self.label, total=self._steps)
        return self

    def __exit__(self, *exc) -> None:
        self._bar.__exit__(*exc)

    def count(self, batch: dict) -> None:
        self.samples += int(batch["attention_mask"].shape[0])
        self.tokens += count_tokens(batch)

    def end_step(self, loss: float) -> None:
        """Record a step's loss; a loss that is NaN or infinite stops training: the run diverged,
        and everything it would report after this step is NaN too."""
        if not math.isfinite(loss):
            raise DpbenchError(
                f"training diverged at step {self.steps + 1} of {self.label or 'training'}: the loss is {loss}; "
                "try a smaller learning rate"
            )
        self.losses.append(loss)
        self._bar.update(self._task, advance=1, description=f"{self.label} loss {loss:.3f}")

    @property
    def steps(self) -> int:
        return len(self.losses)


def count_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum())


def chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def shuffled_batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless epochs of shuffled fixed-size batches (non-private training)."""
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n - batch_size + 1, batch_size):
            yield order[i : i + batch_size]


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def adam(params, spec) -> torch.optim.Optimizer:
    """The fine-tuning optimiser of the gradient methods, at the spec's (resolved) learning rate."""
    return torch.optim.Adam(params, lr=spec.training.lr)

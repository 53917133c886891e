"""Pieces every training method shares: batches of examples, the optimiser, token counts."""

from __future__ import annotations

import random
from typing import Iterator

import torch
from torch.utils.data import Dataset

from dpbench.spec import RunSpec


class IndexDataset(Dataset):
    """Indices into the example list: Opacus samples these, the method encodes examples."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor]:
        return (torch.tensor(i),)  # a tuple: Opacus builds empty Poisson batches from item shapes


def shuffled_batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless epochs of shuffled fixed-size batches (non-private training)."""
    rng = random.Random(seed)
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n - batch_size + 1, batch_size):
            yield order[i : i + batch_size]


def chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def make_optimizer(params, spec: RunSpec) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=spec.training.lr)


def count_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum())


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]

"""Broken DP-SGD mechanisms, the white-box audit's negative controls: for tests and
`benchmarks/negative_controls.py` only.

No spec field, option or flag reaches these. Inside `with broken_mechanism(...)`, the Opacus
optimizer that `make_private` returns is wrapped so that it still *claims* the calibrated σ
(the accountant reads the optimizer's `noise_multiplier` after each step) while it:
  noise      adds `factor` times the noise it accounts for;
  clipping   skips clipping on one parameter group (its per-example gradients are summed raw).
An audit that cannot catch these cannot tell a broken implementation from a correct one.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from dpbench.methods import dpsgd

KINDS = ("noise", "clipping")


@contextmanager
def broken_mechanism(kind: str, factor: float = 0.1, group: str = "language_model") -> Iterator[None]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    real = dpsgd.make_private

    def make_private(model, *args, **kwargs):
        private = real(model, *args, **kwargs)
        optimizer = private.optimizer
        if kind == "noise":
            _scale_noise(optimizer, factor)
        else:
            prefixes = model.PARAMETER_GROUPS[group]
            # Opacus' GradSampleModule prefixes names with `_module.`; the parameters are the same objects
            unclipped = {id(p) for name, p in model.model.named_parameters() if name.startswith(prefixes)}
            _skip_clipping(optimizer, [p for p in optimizer.params if id(p) in unclipped])
        return private

    dpsgd.make_private = make_private
    try:
        yield
    finally:
        dpsgd.make_private = real


def _scale_noise(optimizer, factor: float) -> None:
    add_noise = optimizer.add_noise

    def weak_noise() -> None:
        claimed = optimizer.noise_multiplier
        optimizer.noise_multiplier = claimed * factor
        try:
            add_noise()
        finally:
            optimizer.noise_multiplier = claimed  # what the accountant reads

    optimizer.add_noise = weak_noise


def _skip_clipping(optimizer, params: list[torch.nn.Parameter]) -> None:
    if not params:
        raise ValueError("the group to leave unclipped has no trainable parameters")
    clip_and_accumulate = optimizer.clip_and_accumulate

    def partly_clipped() -> None:
        before = {p: None if p.summed_grad is None else p.summed_grad.clone() for p in params}
        raw = {p: optimizer._get_flat_grad_sample(p).sum(0) for p in params}
        clip_and_accumulate()
        for p in params:  # this call's contribution, unclipped
            p.summed_grad = raw[p] if before[p] is None else before[p] + raw[p]

    optimizer.clip_and_accumulate = partly_clipped

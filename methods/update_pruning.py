"""Gradient-update pruning: keep only the largest coordinates of the noisy DP gradient.

Runs as `train_dp_sgd`'s `post_noise_hook`, once Opacus has clipped, summed, noised and
scaled the gradient: it reads nothing but that released gradient, so it is post-processing
and the accounted ε is unchanged. The rule (the paper's is not public; recorded in results):
keep the top `keep` fraction of coordinates by |noisy gradient|, per tensor or over all
trainable tensors together (`scope`), and zero the rest.

Adam would still move a zeroed coordinate (its first moment remembers earlier steps) and
would decay its moments. With `adam="freeze"` (the default) a pruned coordinate is left
exactly as it was: its parameter and its optimizer moments are restored after the step, so
it neither moves nor forgets; only the Adam step counter, shared by the whole tensor, goes on.
The pruner takes the optimizer step itself (`step`, which `train_dp_sgd` calls in place of the
optimizer's) and steps one parameter at a time, so what it holds besides the model is a copy of
one tensor and its moments, never of the whole model.
`adam="decay"` is plain Adam fed the zeros.
"""

from __future__ import annotations

from typing import Any

import torch

from dpbench.checks import check_fraction
from dpbench.errors import DpbenchError

SCOPES = ("tensor", "global")
ADAM_MODES = ("freeze", "decay")


def kept_count(n: int, keep: float) -> int:
    """How many of n coordinates survive: round(keep·n), at least one."""
    return min(n, max(1, round(keep * n)))


def top_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly k largest entries of |values| (ties broken by position)."""
    flat = values.detach().abs().flatten()
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[flat.topk(k, sorted=False).indices] = True
    return mask.view_as(values)


def keep_masks(grads: list[torch.Tensor], keep: float, scope: str) -> list[torch.Tensor]:
    if scope == "tensor":
        return [top_mask(g, kept_count(g.numel(), keep)) for g in grads]
    flat = torch.cat([g.detach().flatten() for g in grads])
    masks = top_mask(flat, kept_count(flat.numel(), keep)).split([g.numel() for g in grads])
    return [m.view_as(g) for m, g in zip(masks, grads)]


def same_shape_state(p: torch.Tensor, state: dict) -> dict[str, torch.Tensor]:
    """The optimizer state that lives per coordinate (Adam's moments), not per tensor (its step,
    which a 0-dim parameter's moments would otherwise be taken for)."""
    return {name: s for name, s in state.items() if name != "step" and torch.is_tensor(s) and s.shape == p.shape}


class UpdatePruner:
    """The post-noise hook, and the optimizer step that follows it (`step`)."""

    def __init__(self, keep: float = 0.3, scope: str = "tensor", adam: str = "freeze"):
        keep = check_fraction("update_keep", keep)
        if scope not in SCOPES:
            raise DpbenchError(f"update_scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if adam not in ADAM_MODES:
            raise DpbenchError(f"update_adam must be one of {', '.join(ADAM_MODES)}, got {adam!r}")
        self.keep, self.scope, self.adam = keep, scope, adam
        self.masks: dict[torch.nn.Parameter, torch.Tensor] = {}  # this step's kept coordinates
        self.steps, self.kept, self.applied, self.total = 0, 0, 0, 0
        self.audit: set = set()
        self.peak_held_bytes = 0  # the most bytes of parameter and moment copies held at once

    def __call__(self, params: list[torch.nn.Parameter], audit: list[torch.nn.Parameter] = ()) -> None:
        """Prune `params`; an audit block's tensors by the same rule on their own, so they never
        shift which of the model's coordinates are kept."""
        params = [p for p in params if p.grad is not None]
        masks = keep_masks([p.grad for p in params], self.keep, self.scope)
        for p, m in zip(params, masks):
            p.grad.mul_(m)
        audit = [p for p in audit if p.grad is not None]
        audit_masks = keep_masks([p.grad for p in audit], self.keep, self.scope) if audit else []
        for p, m in zip(audit, audit_masks):
            p.grad.mul_(m)
        self.masks = dict(zip([*params, *audit], [*masks, *audit_masks]))
        self.audit = set(audit)
        self.steps += 1
        self.kept += sum(int(m.sum()) for m in masks)
        self.total += sum(m.numel() for m in masks)

    # -- the optimizer step -------------------------------------------------------------------
    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer's step on the pruned gradient (with freeze, one parameter at a time)."""
        try:
            if self.adam == "freeze":
                self._step_each(optimizer)
                return
            optimizer.step()
            for p in [p for group in optimizer.param_groups for p in group["params"] if p in self.masks]:
                self._count(p, optimizer.state.get(p, {}), self.masks[p])
        finally:
            self.masks = {}

    def _step_each(self, optimizer: torch.optim.Optimizer) -> None:
        """Each parameter stepped alone: the optimizer sees one group holding it only. Its state,
        step counter included, is its own, so the updates are those of one step over all."""
        groups = optimizer.param_groups
        try:
            for group in groups:
                for p in group["params"]:
                    if p.grad is not None:  # the optimizer would skip it too
                        optimizer.param_groups = [{**group, "params": [p]}]
                        self._step_frozen(optimizer, p)
        finally:
            optimizer.param_groups = groups

    def _step_frozen(self, optimizer: torch.optim.Optimizer, p: torch.nn.Parameter) -> None:
        """Step `p`, then put its pruned coordinates and their moments back as they were (moments
        the step created, on the first step, back to zeros). The copies live for this call only."""
        mask = self.masks.pop(p, None)
        if mask is None:  # not pruned: a plain step
            optimizer.step()
            return
        values = p.detach().clone()
        moments = {name: s.clone() for name, s in same_shape_state(p, optimizer.state.get(p, {})).items()}
        self.peak_held_bytes = max(self.peak_held_bytes, values.nbytes + sum(s.nbytes for s in moments.values()))
        optimizer.step()
        state = optimizer.state.get(p, {})
        with torch.no_grad():  # in place (no temporary): torch.where is much faster than boolean indexing
            torch.where(mask, p, values, out=p)
            for name, s in same_shape_state(p, state).items():
                torch.where(mask, s, moments[name] if name in moments else s.new_zeros(()), out=s)
        self._count(p, state, mask)

    def _count(self, p: torch.nn.Parameter, state: dict, mask: torch.Tensor) -> None:
        """The coordinates this step moved: Adam moves one iff its first moment is non-zero."""
        if p in self.audit:  # the densities describe the model's update
            return
        moment = state.get("exp_avg")
        moving = (moment if moment is not None else p.grad) != 0
        self.applied += int((moving & mask).sum() if self.adam == "freeze" else moving.sum())

    def details(self) -> dict[str, Any]:
        return {
            "rule": "top-k |noisy gradient|",
            "keep": self.keep,
            "scope": self.scope,
            "adam": self.adam,
            "steps": self.steps,
            "gradient_density": self.kept / self.total if self.total else None,
            "update_density": self.applied / self.total if self.total else None,
            "post_processing": "reads only the noised gradient: no privacy cost",
        }

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
This holds a copy of each parameter and its moments during the step (small beside the
per-example gradients Opacus keeps).
`adam="decay"` is plain Adam fed the zeros.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

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


class UpdatePruner:
    """The post-noise hook; use it as a context manager so `adam="freeze"` can see the step."""

    def __init__(self, keep: float = 0.3, scope: str = "tensor", adam: str = "freeze"):
        keep = check_fraction("update_keep", keep)
        if scope not in SCOPES:
            raise DpbenchError(f"update_scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if adam not in ADAM_MODES:
            raise DpbenchError(f"update_adam must be one of {', '.join(ADAM_MODES)}, got {adam!r}")
        self.keep, self.scope, self.adam = keep, scope, adam
        self.masks: dict[torch.nn.Parameter, torch.Tensor] = {}  # this step's kept coordinates
        self.saved: dict[torch.nn.Parameter, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self.steps, self.kept, self.applied, self.total = 0, 0, 0, 0
        self.audit: set = set()
        self.handles: list = []

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

    # -- the optimizer step around it ---------------------------------------------------------
    def __enter__(self) -> UpdatePruner:
        self.handles = [
            register_optimizer_step_pre_hook(self._before_step),
            register_optimizer_step_post_hook(self._after_step),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.masks, self.saved = [], {}, {}

    def _params(self, optimizer) -> list[torch.nn.Parameter]:
        return [p for group in optimizer.param_groups for p in group["params"] if p in self.masks]

    def _before_step(self, optimizer, args, kwargs) -> None:
        if self.adam != "freeze":
            return
        for p in self._params(optimizer):  # whole copies: torch.where is much faster than boolean indexing
            moments = {
                name: s.clone()
                for name, s in optimizer.state.get(p, {}).items()
                if torch.is_tensor(s) and s.shape == p.shape
            }
            self.saved[p] = (p.detach().clone(), moments)

    def _after_step(self, optimizer, args, kwargs) -> None:
        for p in self._params(optimizer):
            mask = self.masks.pop(p)
            state = optimizer.state.get(p, {})
            if p in self.saved:
                values, moments = self.saved.pop(p)
                with torch.no_grad():
                    p.copy_(torch.where(mask, p, values))
                    for name, s in state.items():
                        if torch.is_tensor(s) and s.shape == p.shape:  # absent before the first step: zeros
                            s.copy_(torch.where(mask, s, moments[name] if name in moments else 0))
            moment = state.get("exp_avg")  # Adam moves a coordinate iff its first moment is non-zero
            moving = (moment if moment is not None else p.grad) != 0
            if p not in self.audit:  # the densities describe the model's update
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

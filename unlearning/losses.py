"""The losses the unlearning methods combine: likelihood, KL to the original model (SIU's dual
mask included) and NPO's preference loss. Each takes the model wrapper and examples, so every
method scores a batch the way training and the audit do (`VisionLanguageModel.encode`)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from dpbench.examples import Example
from dpbench.models.base import VisionLanguageModel

DROPPED = -1e9  # a dropped token's logit: exp underflows to exactly 0 in float32


def nll(model: VisionLanguageModel, examples: Sequence[Example], targets: Sequence[str] | None = None) -> torch.Tensor:
    """Per-example mean negative log-likelihood of the targets (the examples' own by default), (B,)."""
    batch = model.encode(examples, [e.target for e in examples] if targets is None else targets)
    return model.per_example_loss(batch)


def sequence_logprob(model: VisionLanguageModel, batch: dict) -> torch.Tensor:
    """log π(target | prompt, image) of each example: the sum over its target tokens, (B,)."""
    logp, mask = model.token_logprobs(batch)
    return (logp * mask).sum(-1)


def npo(model: VisionLanguageModel, original: VisionLanguageModel, examples: Sequence[Example], beta: float):
    """Negative preference optimisation (Zhang et al. 2024): -(2/β) log σ(-β log(π/π_ref)) on the
    forget examples, mean over them. Bounded where gradient ascent is not: it flattens once the
    model puts less mass on the forget targets than the reference does."""
    batch = model.encode(examples, [e.target for e in examples])
    with torch.no_grad():
        ref = sequence_logprob(original, batch)
    ratio = sequence_logprob(model, batch) - ref
    return -(2.0 / beta) * F.logsigmoid(-beta * ratio).mean()


def masked_kl(
    model: VisionLanguageModel,
    original: VisionLanguageModel,
    examples: Sequence[Example],
    targets: Sequence[str],
    token_mask: torch.Tensor | None = None,
    vocab_mask: Sequence[int] = (),
) -> torch.Tensor:
    """KL(original ‖ model) over the target positions, mean over the positions kept.

    SIU's Dual Masked KL: `token_mask` (B, T), False where a position belongs to a phrase the
    targets changed (the model must move there), and `vocab_mask`, token ids of the concept
    dropped from both distributions before they are normalised (so keeping close to the original
    elsewhere never pulls the concept's own tokens back up)."""
    batch = model.encode(examples, targets)
    logits, labels = model.forward_target_logits(batch)
    with torch.no_grad():
        ref_logits, _ = original.forward_target_logits(batch)
    if vocab_mask:
        drop = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        drop[list(vocab_mask)] = True
        # a finite floor, not -inf: the dropped tokens' terms are then exactly 0 · (finite), never NaN
        logits = logits.masked_fill(drop, DROPPED)
        ref_logits = ref_logits.masked_fill(drop, DROPPED)
    logp, ref_logp = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    per_position = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    keep = labels != -100
    if token_mask is not None:
        keep = keep & token_mask
    if not keep.any():
        return logits.sum() * 0.0  # every position masked: no KL term, still a graph for backward
    return per_position[keep].mean()

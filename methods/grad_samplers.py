"""Opacus per-sample-gradient rules for layers Opacus does not know.

Without these, Opacus' hooks mode falls back to functorch for the Llama RMSNorm and its
copies (Qwen2-VL's language model; Idefics3 and SmolVLM use Llama's own): correct but slower
and heavier. Ghost clipping asks for per-example gradient *norms*; the RMSNorm's
per-example gradient is one small vector per example, so its norm rule just takes the norm of
it. Importing this module registers them.
"""

from __future__ import annotations

import torch
from opacus.grad_sample.utils import register_grad_sampler, register_norm_sampler
from opacus.utils.tensor_utils import sum_over_all_but_batch_and_last_n
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLRMSNorm

RMS_NORMS = [LlamaRMSNorm, Qwen2VLRMSNorm]  # the same layer: weight * x / rms(x)


def _rms_normalise(x: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.to(torch.float32)
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


@register_grad_sampler(RMS_NORMS)
def llama_rms_norm_grad_sample(layer: LlamaRMSNorm, activations: list[torch.Tensor], backprops: torch.Tensor):
    """out = weight * normalise(x), so d out / d weight summed over positions, per example."""
    if not layer.weight.requires_grad:
        return {}
    normed = _rms_normalise(activations[0], layer.variance_epsilon)
    return {layer.weight: sum_over_all_but_batch_and_last_n(normed * backprops, layer.weight.dim())}


@register_norm_sampler(RMS_NORMS)
def llama_rms_norm_norm_sample(layer: LlamaRMSNorm, activations: list[torch.Tensor], backprops: torch.Tensor):
    grads = llama_rms_norm_grad_sample(layer, activations, backprops)
    return {p: g.flatten(1).norm(2, dim=-1) for p, g in grads.items()}

"""Where visual-token pruning hooks into each architecture: one small adapter per `model_type`.

An adapter names the module whose output is pruned (projector / connector / merger), the
language model's entry (its input_ids say where each image's placeholders are), the vision
attention whose input gives the [CLS] or mean-attention cue, and the input embeddings
(text-guided). `TokenPruner` in `token_pruning` installs the hooks through it; each architecture names its
adapter in `dpbench.models.architectures`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from dpbench.models.qwen2_vl import mrope_positions

if TYPE_CHECKING:
    from dpbench.models.token_pruning import TokenPruner


def qk_attention(attn, hidden: torch.Tensor, cls_dropped: bool) -> torch.Tensor:
    """(n, T'): CLIP/SigLIP-style attention (q_proj, k_proj) at `hidden` (n, T, D), heads
    averaged: from [CLS] to the patches, or without a dropped [CLS] the mean each token receives."""
    n = hidden.shape[0]
    heads = lambda x: x.view(n, x.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2)  # noqa: E731
    keys = heads(F.linear(hidden, attn.k_proj.weight, attn.k_proj.bias)).float()
    queries = heads(F.linear(hidden[:, :1] if cls_dropped else hidden, attn.q_proj.weight, attn.q_proj.bias)).float()
    weights = torch.softmax(queries @ keys.transpose(-1, -2) * attn.scale, -1).mean(1)  # (n, q, T)
    return weights[:, 0, 1:] if cls_dropped else weights.mean(1)


class Adapter:
    """Where pruning hooks into one architecture. By default the projector returns
    (n_images, N, D) and the batch's positions are 1-D."""

    projector: torch.nn.Module  # its output is pruned; its training flag gates the fused noise
    lm_entry: torch.nn.Module  # called with the (pruned) input_ids and attention mask
    vision_attention: torch.nn.Module  # the attention whose input the [CLS]/mean-attention cue reads
    embeddings: torch.nn.Module  # input embeddings (text-guided)

    def install(self, pruner: TokenPruner) -> list:
        return [
            self.vision_attention.register_forward_pre_hook(pruner._on_vision, with_kwargs=True),
            self.lm_entry.register_forward_pre_hook(pruner._on_lm, with_kwargs=True),
            self.projector.register_forward_hook(pruner._on_projector),
        ]

    def attention_scores(self, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """(n_images, N) from the vision attention's captured input."""
        raise NotImplementedError


class LlavaAdapter(Adapter):
    """LLaVA-1.5-style models: one projector call per batch of images, 1-D positions."""

    def __init__(self, hf_model):
        cfg, inner = hf_model.config, hf_model.model
        self.projector = inner.multi_modal_projector
        self.lm_entry = inner  # its input_ids are the (pruned) placeholders and the text
        self.embeddings = hf_model.get_input_embeddings()
        layer = cfg.vision_feature_layer
        layer = layer[-1] if isinstance(layer, (list, tuple)) else layer
        tower = getattr(inner.vision_tower, "vision_model", inner.vision_tower)  # older transformers nest it
        layers = tower.encoder.layers
        # hidden_states[0] is the embeddings, hidden_states[i] the output of layer i - 1
        self.vision_attention = layers[len(layers) + layer if layer < 0 else max(layer - 1, 0)].self_attn
        self.cls_dropped = cfg.vision_feature_select_strategy == "default"

    def attention_scores(self, hidden, kwargs):
        return qk_attention(self.vision_attention, hidden, self.cls_dropped)


class Idefics3Adapter(Adapter):
    """Idefics3 and SmolVLM: SigLIP (no [CLS]) -> pixel-shuffle connector -> Llama, 1-D positions."""

    def __init__(self, hf_model):
        inner = hf_model.model
        self.projector = inner.connector
        self.lm_entry = inner
        self.embeddings = hf_model.get_input_embeddings()
        self.vision_attention = inner.vision_model.encoder.layers[-1].self_attn  # the connector reads the last

    def attention_scores(self, hidden, kwargs):
        patches = qk_attention(self.vision_attention, hidden, cls_dropped=False)
        # a connector token is a scale x scale block of patches: pool their scores the same way
        return self.projector.pixel_shuffle(patches.unsqueeze(-1), self.projector.scale_factor).mean(-1)


class Qwen2VLAdapter(Adapter):
    """Qwen2-VL: a ViT over all images as one flat patch sequence -> 2 x 2 merger -> LM with
    3-D M-RoPE positions. The model splits the merger's flat output per image (by
    image_grid_thw) before the placeholders are filled, so pruning wraps `get_image_features`,
    whose output is per image, rather than hooking the merger; the kept tokens' positions
    (`mrope_positions`) then replace the batch's at the language model's entry."""

    def __init__(self, hf_model):
        inner = hf_model.model
        self.hf_model, self.inner = hf_model, inner
        self.projector = inner.visual.merger
        self.lm_entry = inner
        self.embeddings = hf_model.get_input_embeddings()
        self.vision_attention = inner.visual.blocks[-1].attn  # the merger reads the last block
        self.merge = inner.visual.spatial_merge_size
        self.positions: torch.Tensor | None = None  # for the next language-model call

    def install(self, pruner: TokenPruner) -> list:
        original = self.inner.get_image_features

        def pruned_features(pixel_values, image_grid_thw=None, **kwargs):
            out = original(pixel_values, image_grid_thw, **kwargs)
            ids, mask = pruner.lm_inputs()
            out.pooler_output = tuple(pruner.prune(torch.stack(out.pooler_output)))
            mask = torch.ones_like(ids) if mask is None else mask
            self.positions = mrope_positions(self.hf_model, ids, mask, image_grid_thw, pruner.kept)
            return out

        self.inner.get_image_features = pruned_features  # an instance attribute: `remove` deletes it
        return [
            self.vision_attention.register_forward_pre_hook(pruner._on_vision, with_kwargs=True),
            self.lm_entry.register_forward_pre_hook(pruner._on_lm, with_kwargs=True),
            self.inner.language_model.register_forward_pre_hook(self._on_language_model, with_kwargs=True),
            _Unpatch(self.inner, "get_image_features"),
        ]

    def _on_language_model(self, module, args, kwargs):
        positions, self.positions = self.positions, None
        embeds = kwargs.get("inputs_embeds")  # the model hands its language model embeddings, never ids
        # only right after the images' own features (generation's later steps have no images)
        if positions is not None and embeds is not None and positions.shape[1:] == embeds.shape[:2]:
            kwargs["position_ids"] = positions.to(embeds.device)
            return args, kwargs

    def attention_scores(self, hidden, kwargs):
        from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

        attn, total = self.vision_attention, hidden.shape[0]
        q, k, _ = attn.qkv(hidden).reshape(total, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, *kwargs["position_embeddings"])
        n = len(kwargs["cu_seqlens"]) - 1  # images, all of one size; one at a time bounds the memory
        q, k = (x.reshape(n, total // n, attn.num_heads, -1).transpose(1, 2).float() for x in (q, k))
        received = torch.stack(
            [torch.softmax(qi @ ki.transpose(-1, -2) * attn.scaling, -1).mean((0, 1)) for qi, ki in zip(q, k)]
        )  # (n, patches)
        return received.view(n, -1, self.merge**2).mean(-1)  # a merged token is merge^2 adjacent patches


class _Unpatch:
    def __init__(self, obj, attribute: str):
        self.obj, self.attribute = obj, attribute

    def remove(self) -> None:
        self.obj.__dict__.pop(self.attribute, None)

"""Full-size public architectures with random weights: for systems measurements only.

Memory and throughput depend on a model's shape, not on its weights, so `dpbench bench` can
measure LLaVA-1.5-7B's regime without the checkpoint (no model hub here). Each shape is the
published `config.json` of its checkpoint, transcribed; `tests/test_random_init.py` checks the
parameter counts against the published totals. The tokenizer is the embedded tiny-llava's with
the architecture's special tokens added (prompts keep the embedded model's token counts; the
vocabulary, hence embedding and head sizes, is the published one), and each processor gives
the checkpoint's image geometry (LLaVA-1.5: 336 px, 576 visual tokens).

`ModelShape` truncates a shape so a CPU can measure it: `layers` language-model layers (the
vision tower keeps the same fraction of its depth), `hidden_size` a narrower language model
(head size, grouped-query ratio and MLP ratio kept). Such a model never answers a question:
`dpbench run` refuses it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

from dpbench.errors import DpbenchError

SOURCE = "random-init (systems only)"  # the model.source of every model built here
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class ModelShape:
    layers: int | None = None  # language-model layers; None: the published depth
    hidden_size: int | None = None  # language-model width; None: the published width


FULL_SHAPE = ModelShape()


@dataclass(frozen=True)
class PublicShape:
    checkpoint: str  # where the config was published (a hub id; never downloaded)
    architecture: str  # config.model_type
    parameters: int  # the published total, for the transcription test
    text: dict
    vision: dict
    vision_depth_key: str  # the vision config's layer-count field
    top: dict


LLAVA_1_5_7B = PublicShape(
    checkpoint="llava-hf/llava-1.5-7b-hf",
    architecture="llava",
    parameters=7_063_427_072,
    text=dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        vocab_size=32064,
        tie_word_embeddings=False,
    ),
    vision=dict(  # CLIP ViT-L/14 at 336 px
        model_type="clip_vision_model",
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    ),
    vision_depth_key="num_hidden_layers",
    top=dict(
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=576,
        tie_word_embeddings=False,
    ),
)
QWEN2_VL_2B = PublicShape(
    checkpoint="Qwen/Qwen2-VL-2B-Instruct",
    architecture="qwen2_vl",
    parameters=2_208_985_600,
    text=dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        vocab_size=151936,
        rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
        tie_word_embeddings=True,
    ),
    vision=dict(
        depth=32,
        embed_dim=1280,
        hidden_size=1536,  # the merger's output: the language model's width
        num_heads=16,
        mlp_ratio=4,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    ),
    vision_depth_key="depth",
    top=dict(tie_word_embeddings=True),
)
SMOLVLM_256M = PublicShape(
    checkpoint="HuggingFaceTB/SmolVLM-256M-Instruct",
    architecture="idefics3",
    parameters=256_484_928,
    text=dict(
        model_type="llama",
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        vocab_size=49280,
        tie_word_embeddings=False,
    ),
    vision=dict(  # SigLIP base, patch 16, 512 px
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=512,
        patch_size=16,
    ),
    vision_depth_key="num_hidden_layers",
    top=dict(scale_factor=4, tie_word_embeddings=False),
)


def shaped_configs(public: PublicShape, shape: ModelShape) -> tuple[dict, dict]:
    """(text, vision) config dicts of `public` truncated and narrowed as `shape` asks."""
    text, vision = copy.deepcopy(public.text), copy.deepcopy(public.vision)
    depth, vision_depth = text["num_hidden_layers"], vision[public.vision_depth_key]
    if shape.layers is not None:
        if not 1 <= shape.layers <= depth:
            raise DpbenchError(f"--layers {shape.layers}: {public.checkpoint} has 1 to {depth} language-model layers")
        text["num_hidden_layers"] = shape.layers
        vision[public.vision_depth_key] = max(1, math.ceil(shape.layers * vision_depth / depth))
    if shape.hidden_size is not None:
        width, heads = text["hidden_size"], text["num_attention_heads"]
        head_dim, group = width // heads, heads // text["num_key_value_heads"]
        if shape.hidden_size % (head_dim * group) or shape.hidden_size > width:
            raise DpbenchError(
                f"--hidden-size {shape.hidden_size}: {public.checkpoint}'s language model takes a multiple of "
                f"{head_dim * group} (head size {head_dim} x {group} heads per key-value head) up to {width}"
            )
        text["hidden_size"] = shape.hidden_size
        text["num_attention_heads"] = shape.hidden_size // head_dim
        text["num_key_value_heads"] = shape.hidden_size // head_dim // group
        text["head_dim"] = head_dim
        text["intermediate_size"] = round(text["intermediate_size"] * shape.hidden_size / width / 64) * 64
        if public.architecture == "qwen2_vl":
            vision["hidden_size"] = shape.hidden_size
    return text, vision


def build_hf_model(public: PublicShape, shape: ModelShape, tokenizer, device: str = "cpu"):
    """The HF model of `public` at `shape`, random weights, made on `device` directly."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    text, vision = shaped_configs(public, shape)
    ids = tokenizer.convert_tokens_to_ids
    extra = {
        "llava": lambda: {"image_token_index": ids("<image>")},
        "qwen2_vl": lambda: {
            "image_token_id": ids("<|image_pad|>"),
            "video_token_id": ids("<|video_pad|>"),
            "vision_start_token_id": ids("<|vision_start|>"),
            "vision_end_token_id": ids("<|vision_end|>"),
        },
        "idefics3": lambda: {"image_token_id": ids("<image>")},
    }[public.architecture]()
    text = dict(
        text,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = AutoConfig.for_model(
        public.architecture,
        text_config=text,
        vision_config=vision,
        pad_token_id=tokenizer.pad_token_id,
        **public.top,
        **extra,
    )
    config._attn_implementation = "eager"  # as every loaded model (`registry.load_hf`)
    with torch.device(device):
        return AutoModelForImageTextToText.from_config(config, attn_implementation="eager").eval()


def parameter_count(public: PublicShape, shape: ModelShape = FULL_SHAPE) -> int:
    """Parameters of `public` at `shape`, counted on the meta device (nothing allocated)."""
    from dpbench.models.random_init_processors import systems_tokenizer

    model = build_hf_model(public, shape, systems_tokenizer(public.architecture), device="meta")
    return sum(p.numel() for p in model.parameters())

"""Tokenizers and processors for the random-init systems models (`dpbench.models.random_init`).

One tokenizer for all: the embedded tiny-llava's byte-level BPE (so a prompt has the same
number of tokens under every architecture) plus each architecture's special tokens. The image
processors reproduce each checkpoint's image geometry; what a processor does to pixel values
beyond their shape does not matter for memory or speed.
"""

from __future__ import annotations

import copy
from functools import lru_cache

from dpbench.models.random_init import CLIP_MEAN, CLIP_STD

SPECIALS = {
    "llava": ("<image>", []),
    "qwen2_vl": (
        "<|image_pad|>",
        ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"],
    ),
    "idefics3": ("<image>", ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]),
}
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS_TEMPLATE = (
    "<s>{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


@lru_cache(maxsize=1)
def _embedded_tokenizer():
    from transformers import AutoTokenizer

    from dpbench.models.loading import TinyLlava

    return AutoTokenizer.from_pretrained(TinyLlava().ensure_built(), local_files_only=True)


def systems_tokenizer(architecture: str):
    from transformers import PreTrainedTokenizerFast

    image_token, specials = SPECIALS[architecture]
    base = _embedded_tokenizer()
    backend = copy.deepcopy(base.backend_tokenizer)
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": image_token},
        padding_side="left",
    )


def systems_processor(architecture: str, vision: dict, tokenizer, scale_factor: int | None = None):
    """The processor of one architecture at the vision config's image geometry."""
    if architecture == "llava":
        from transformers import CLIPImageProcessorPil, LlavaProcessor

        side = vision["image_size"]
        images = CLIPImageProcessorPil(
            size={"shortest_edge": side},
            crop_size={"height": side, "width": side},
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        )
        from dpbench.models.tiny_llava import CHAT_TEMPLATE  # LLaVA-1.5's conversation format

        return LlavaProcessor(
            image_processor=images,
            tokenizer=tokenizer,
            patch_size=vision["patch_size"],
            vision_feature_select_strategy="default",
            chat_template=CHAT_TEMPLATE,
            image_token="<image>",
            num_additional_image_tokens=1,
        )
    if architecture == "qwen2_vl":
        from transformers import Qwen2VLImageProcessorPil

        from dpbench.models.qwen2_vl import image_only_qwen2_vl_processor

        images = Qwen2VLImageProcessorPil(
            patch_size=vision["patch_size"],
            merge_size=vision["spatial_merge_size"],
            temporal_patch_size=vision["temporal_patch_size"],
            min_pixels=56 * 56,
            max_pixels=28 * 28 * 1280,
            image_mean=CLIP_MEAN,
            image_std=CLIP_STD,
        )
        return image_only_qwen2_vl_processor()(image_processor=images, tokenizer=tokenizer, chat_template=QWEN_TEMPLATE)
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    side = vision["image_size"]
    images = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        max_image_size={"longest_edge": side},
        size={"longest_edge": side},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    tokens = (side // vision["patch_size"]) ** 2 // scale_factor**2
    return Idefics3Processor(
        image_processor=images, tokenizer=tokenizer, image_seq_len=tokens, chat_template=IDEFICS_TEMPLATE
    )

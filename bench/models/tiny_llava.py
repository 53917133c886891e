"""The embedded default model: a tiny but real `LlavaForConditionalGeneration`.

CLIP-style vision tower -> two-layer projector -> Llama-style language model, with a
byte-level BPE tokenizer trained offline by `tokenizers` and wrapped (with the `<image>`
token and a LLaVA-1.5-style chat template) in a real `LlavaProcessor`. It is saved with
`save_pretrained`, so it loads through exactly the code path of any local LLaVA checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

IMAGE_SIZE = 16
PATCH_SIZE = 2  # (16 / 2)^2 = 64 visual tokens per image
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
CHAT_TEMPLATE = (  # LLaVA-1.5's "USER: <image>\n{prompt} ASSISTANT: {answer}</s>"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{{ '\\n' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} "
    "{% else %}ASSISTANT: {{ message['content'][0]['text'] }}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
ARCH = dict(
    vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4),
    vocab_size=640,
)


def config_key(*pretraining) -> str:
    """Cache key: a change of architecture, tokenizer or pre-training recipe rebuilds."""
    blob = json.dumps([ARCH, IMAGE_SIZE, PATCH_SIZE, CHAT_TEMPLATE, *pretraining], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def build_tokenizer(corpus: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=ARCH["vocab_size"],
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any text stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )


def build_processor(tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        # [-1, 1] pixels: the tiny model barely trains on [0, 1] (DESIGN.md pitfalls)
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlavaForConditionalGeneration:
    import torch

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        **ARCH["vision"], image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, num_channels=3, projection_dim=64
    )
    text = LlamaConfig(
        **ARCH["text"],
        vocab_size=len(tokenizer),
        num_key_value_heads=ARCH["text"]["num_attention_heads"],
        max_position_embeddings=512,
        tie_word_embeddings=False,  # Opacus' ghost clipping rejects tied embeddings
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        # the last CLIP layer: with -2 it would be trainable yet never receive a gradient
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        tie_word_embeddings=False,
    )
    # eager attention: faster than SDPA on CPU at these sizes, and it exposes attention
    # weights, which the [CLS]-attention token pruner reads
    config._attn_implementation = "eager"
    return LlavaForConditionalGeneration(config)


def save(model, processor, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)

"""What differs between the HF vision-language architectures dpbench runs, keyed by `config.model_type`.

`VisionLanguageModel` asks its architecture for: the `--trainable` parameter groups (module-name
prefixes), how many visual tokens one image becomes, which image-processor outputs travel
with `pixel_values`, how to load and set up the processor, and (Qwen2-VL) the 3-D positions.
Token pruning keeps its own per-architecture adapters next to its hooks
(`dpbench.methods.pruning_adapters.ADAPTERS`).

Every image becomes a fixed number of visual tokens (the DP unit is one example, and pruning
keeps k of N per image): Idefics3/SmolVLM with image splitting off, Qwen2-VL with every image
resized to one square size.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch
from PIL import Image

from dpbench.errors import DpbenchError
from dpbench.registry import Registry

QWEN2_VL_IMAGE_SIDE = 448  # px: 32 x 32 patches of 14 px, merged 2 x 2 into 256 visual tokens


class Architecture:
    name: str  # the model_type, set by the registry decorator
    parameter_groups: dict[str, tuple[str, ...]]
    image_inputs: tuple[str, ...] = ("pixel_values",)  # image-processor outputs, concatenated over a batch
    mrope = False  # positions are Qwen2-VL's 3-D M-RoPE ones, not 1-D
    # groups whose layers see a batch's images as one flat sequence (no row per image or
    # example): Opacus' per-sample gradients there are per patch, and clipping them bounds
    # nothing about one example
    flat_groups: tuple[str, ...] = ()

    def load_processor(self, path: str | Path):
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(path, local_files_only=True)

    def prepare_processor(self, processor, model) -> None:
        """Set processor options dpbench relies on (fixed tokens per image)."""

    def prepare_image(self, image: Image.Image, processor) -> Image.Image:
        return image

    def visual_tokens_per_image(self, model, processor) -> int:
        raise NotImplementedError


ARCHITECTURES: Registry[type[Architecture]] = Registry("architecture", base=Architecture)


def architecture(model_type: str) -> Architecture:
    if model_type not in ARCHITECTURES:
        raise DpbenchError(f"dpbench does not support {model_type!r} models; supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES.get(model_type)()


@ARCHITECTURES.register("llava")
class Llava(Architecture):
    parameter_groups = {
        "vision_tower": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.",),
        "language_model": ("model.language_model.", "lm_head."),
    }

    def visual_tokens_per_image(self, model, processor) -> int:
        return int(model.config.image_seq_length)


@ARCHITECTURES.register("idefics3")
class Idefics3(Architecture):
    parameter_groups = {
        "vision_tower": ("model.vision_model.",),
        "projector": ("model.connector.",),
        "language_model": ("model.text_model.", "lm_head."),
    }
    image_inputs = ("pixel_values", "pixel_attention_mask")

    def prepare_processor(self, processor, model) -> None:
        # without splitting, every image is resized to one max_image_size square: image_seq_len tokens
        processor.image_processor.do_image_splitting = False
        side = processor.image_processor.max_image_size["longest_edge"]
        vision = model.config.vision_config
        made = (side // vision.patch_size) ** 2 // model.config.scale_factor**2
        if made != processor.image_seq_len:
            raise DpbenchError(f"{self.name}: images of {side} px give {made} visual tokens but the processor "
                               f"writes {processor.image_seq_len} placeholders; check max_image_size")

    def visual_tokens_per_image(self, model, processor) -> int:
        return int(processor.image_seq_len)


@ARCHITECTURES.register("smolvlm")
class SmolVLM(Idefics3):
    """Idefics3's architecture; its processor (for videos too) needs num2words and torchvision,
    so images go through Idefics3's processor, which writes the same single-image prompt."""

    def load_processor(self, path: str | Path):
        from transformers import Idefics3Processor

        return Idefics3Processor.from_pretrained(path, local_files_only=True)


@ARCHITECTURES.register("qwen2_vl")
class Qwen2VL(Architecture):
    parameter_groups = {
        "vision_tower": ("model.visual.patch_embed.", "model.visual.blocks."),
        "projector": ("model.visual.merger.",),
        "language_model": ("model.language_model.", "lm_head."),
    }
    image_inputs = ("pixel_values", "image_grid_thw")
    mrope = True
    flat_groups = ("vision_tower", "projector")  # the ViT and merger run on (all patches, D)

    def load_processor(self, path: str | Path):
        return image_only_qwen2_vl_processor().from_pretrained(path, local_files_only=True)

    def image_side(self, processor) -> int:
        """QWEN2_VL_IMAGE_SIDE within the processor's pixel bounds, a multiple of its patch x merge."""
        ip = processor.image_processor
        factor = ip.patch_size * ip.merge_size
        low = math.ceil(math.sqrt(ip.size["shortest_edge"]) / factor) * factor
        high = math.floor(math.sqrt(ip.size["longest_edge"]) / factor) * factor
        return max(low, min(high, QWEN2_VL_IMAGE_SIDE // factor * factor))

    def prepare_image(self, image: Image.Image, processor) -> Image.Image:
        # the processor keeps aspect ratios (a token count per image shape): squash to one square,
        # as Idefics3 without splitting does
        side = self.image_side(processor)
        return image if image.size == (side, side) else image.resize((side, side), Image.BICUBIC)

    def visual_tokens_per_image(self, model, processor) -> int:
        vision = model.config.vision_config
        return (self.image_side(processor) // vision.patch_size) ** 2 // vision.spatial_merge_size**2


def mrope_positions(hf_model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    image_grid_thw: torch.Tensor | None, kept: torch.Tensor) -> torch.Tensor:
    """Qwen2-VL's (3, B, L) M-RoPE positions for a batch whose images keep tokens `kept`
    (n_images, k) of their N (all N: the unpruned batch).

    The model's own `get_rope_index` runs on the batch with every image's placeholders
    restored to N, and each kept token takes its position there (FastV's and VisionZip's
    choice for Qwen2-VL): text positions never depend on which tokens were kept. Padding gets
    position 0, as in the model.
    """
    image_id = hf_model.config.image_token_id
    n_images, k = kept.shape
    per_image = 0
    if n_images:
        merge = hf_model.config.vision_config.spatial_merge_size
        sizes = (image_grid_thw.prod(-1) // merge**2).tolist()
        if len(set(sizes)) != 1 or len(sizes) != n_images:
            raise DpbenchError(f"expected {n_images} images of one size, got token counts {sizes}")
        per_image = sizes[0]
    kept = kept.tolist()
    rows, masks, columns, image = [], [], [], 0
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        full, full_mask, where, run = [], [], [], 0
        for t, m in zip(ids, mask):
            if t == image_id and m:
                if run % k == 0:  # an image's first kept placeholder: restore all N
                    start, image = len(full), image + 1
                    full += [image_id] * per_image
                    full_mask += [1] * per_image
                where.append(start + kept[image - 1][run % k])
                run += 1
            else:
                run = 0
                where.append(len(full))
                full.append(t)
                full_mask.append(m)
        rows.append(full), masks.append(full_mask), columns.append(where)
    if image != n_images:
        raise DpbenchError(f"the batch has placeholders for {image} images but {n_images} images")
    width = max(map(len, rows))
    pad = [width - len(r) for r in rows]  # left padding, like the batch itself
    full_ids = torch.tensor([[0] * p + r for p, r in zip(pad, rows)], device=input_ids.device)
    full_mask = torch.tensor([[0] * p + m for p, m in zip(pad, masks)], device=input_ids.device)
    positions, _ = hf_model.model.get_rope_index(
        full_ids, mm_token_type_ids=(full_ids == image_id).int() * full_mask,
        image_grid_thw=image_grid_thw, attention_mask=full_mask,
    )
    index = torch.tensor([[p + c for c in cols] for p, cols in zip(pad, columns)], device=input_ids.device)
    return positions.gather(2, index.unsqueeze(0).expand(3, -1, -1))


@lru_cache(maxsize=1)
def image_only_qwen2_vl_processor():
    """Qwen2VLProcessor without its video processor, which needs torchvision (dpbench feeds
    images only). Built on first use: importing transformers is slow."""
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", "<|image_pad|>")
            self.video_token = getattr(tokenizer, "video_token", "<|video_pad|>")
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)

    return ImageOnlyQwen2VLProcessor

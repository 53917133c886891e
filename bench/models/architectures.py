"""What differs between the HF vision-language architectures dpbench runs, keyed by `config.model_type`.

`VisionLanguageModel` asks its architecture for: the `--trainable` parameter groups (module-name
prefixes), how many visual tokens one image becomes, which image-processor outputs travel
with `pixel_values`, how to load and set up the processor, and where visual-token pruning
hooks in (`pruning_adapter`, from `dpbench.models.pruning_adapters`). Adding an architecture is
one entry here.

Every image becomes a fixed number of visual tokens (the DP unit is one example, and pruning
keeps k of N per image): Idefics3/SmolVLM with image splitting off, Qwen2-VL with every image
resized to one square size.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from dpbench.errors import DpbenchError
from dpbench.models.pruning_adapters import Adapter, Idefics3Adapter, LlavaAdapter, Qwen2VLAdapter
from dpbench.models.qwen2_vl import image_only_qwen2_vl_processor
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
    pruning_adapter: type[Adapter]  # where visual-token pruning hooks into this architecture

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
    """LLaVA / LLaVA-1.5 (llava-hf layout): config.json, safetensors weights, tokenizer and processor files."""

    parameter_groups = {
        "vision_tower": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.",),
        "language_model": ("model.language_model.", "lm_head."),
    }
    pruning_adapter = LlavaAdapter

    def visual_tokens_per_image(self, model, processor) -> int:
        return int(model.config.image_seq_length)


@ARCHITECTURES.register("idefics3")
class Idefics3(Architecture):
    """Idefics3: config.json, safetensors weights, processor; images are not split (one square each)."""

    parameter_groups = {
        "vision_tower": ("model.vision_model.",),
        "projector": ("model.connector.",),
        "language_model": ("model.text_model.", "lm_head."),
    }
    image_inputs = ("pixel_values", "pixel_attention_mask")
    pruning_adapter = Idefics3Adapter

    def prepare_processor(self, processor, model) -> None:
        # without splitting, every image is resized to one max_image_size square: image_seq_len tokens
        processor.image_processor.do_image_splitting = False
        side = processor.image_processor.max_image_size["longest_edge"]
        vision = model.config.vision_config
        made = (side // vision.patch_size) ** 2 // model.config.scale_factor**2
        if made != processor.image_seq_len:
            raise DpbenchError(
                f"{self.name}: images of {side} px give {made} visual tokens but the processor "
                f"writes {processor.image_seq_len} placeholders; check max_image_size"
            )

    def visual_tokens_per_image(self, model, processor) -> int:
        return int(processor.image_seq_len)


@ARCHITECTURES.register("smolvlm")
class SmolVLM(Idefics3):
    """SmolVLM (Idefics3 architecture): as idefics3; images go through Idefics3's processor.

    SmolVLM's own processor (for videos too) needs num2words and torchvision; Idefics3's writes
    the same single-image prompt."""

    def load_processor(self, path: str | Path):
        from transformers import Idefics3Processor

        return Idefics3Processor.from_pretrained(path, local_files_only=True)


@ARCHITECTURES.register("qwen2_vl")
class Qwen2VL(Architecture):
    """Qwen2-VL: config.json, safetensors weights, processor; DP-SGD trains its language model only."""

    parameter_groups = {
        "vision_tower": ("model.visual.patch_embed.", "model.visual.blocks."),
        "projector": ("model.visual.merger.",),
        "language_model": ("model.language_model.", "lm_head."),
    }
    image_inputs = ("pixel_values", "image_grid_thw")
    mrope = True
    flat_groups = ("vision_tower", "projector")  # the ViT and merger run on (all patches, D)
    pruning_adapter = Qwen2VLAdapter

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

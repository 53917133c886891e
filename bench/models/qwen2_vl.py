"""Qwen2-VL's own needs: 3-D M-RoPE positions for a pruned batch, and an image-only processor."""

from __future__ import annotations

from functools import lru_cache

import torch

from dpbench.errors import DpbenchError


def mrope_positions(
    hf_model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    kept: torch.Tensor,
) -> torch.Tensor:
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
        full_ids,
        mm_token_type_ids=(full_ids == image_id).int() * full_mask,
        image_grid_thw=image_grid_thw,
        attention_mask=full_mask,
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

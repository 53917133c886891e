"""A vision-language model with its processor, and the few operations dpbench needs of it.

Everything model-specific a method or task touches goes through here: encoding examples to
tensors, per-example losses (the DP privacy unit is one example), choice log-likelihoods,
and which parameter groups are trainable.
"""

from __future__ import annotations

from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from dpbench.errors import DpbenchError
from dpbench.examples import Example
from dpbench.models.architectures import architecture
from dpbench.models.qwen2_vl import mrope_positions

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}  # spec.training.precision -> autocast dtype


@lru_cache(maxsize=8192)
def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DpbenchError(f"unreadable image {path}: {e}") from None


@dataclass
class ModelInfo:
    name: str
    source: str  # "embedded-pretrained" or "local"
    path: str | None
    architecture: str
    weights_sha256: str | None = None  # of the base weights the run starts from (`registry.weights_sha256`)


@dataclass
class EncodingCache:
    """A processor's per-example encodings: prompt ids by example, image inputs by path (kept
    while they fit `VisionLanguageModel.PIXEL_CACHE_BYTES`)."""

    prompt_ids: dict[Example, tuple[int, ...]] = field(default_factory=dict)
    pixels: dict[Path, dict[str, torch.Tensor]] = field(default_factory=dict)
    pixel_bytes: int = 0


class VisionLanguageModel:
    """Wraps an HF image-text-to-text model (LLaVA, Idefics3/SmolVLM, Qwen2-VL) and its processor."""

    PIXEL_CACHE_BYTES = 256 * 2**20  # ~80k images at 16 px, ~180 at LLaVA-1.5's 336 px

    def __init__(self, model, processor, info: ModelInfo, device: str = "cpu", encodings: EncodingCache | None = None):
        self.arch = architecture(model.config.model_type)
        self.arch.prepare_processor(processor, model)
        # parameter groups selectable with `--trainable`, as module-name prefixes
        self.PARAMETER_GROUPS = self.arch.parameter_groups
        self.model = model.to(device)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.info = info
        self.device = torch.device(device)
        self.image_token_id = model.config.image_token_id
        self._visual_tokens = self.arch.visual_tokens_per_image(model, processor)
        self.tokens_encoded = 0  # non-padding tokens handed to the model, for throughput
        self.visual_tokens_kept = self.visual_tokens_per_image  # token pruning lowers it
        self.token_pruner = None  # the installed `TokenPruner`, if any
        self.last_batch: dict | None = None  # the latest `encode` output (text-guided pruning reads it)
        self._encodings = encodings or EncodingCache()  # a copy shares its original's: the same processor
        self.autocast: torch.dtype | None = None  # set by `training_precision`: forwards under autocast

    def copy(self, device: str | None = None) -> VisionLanguageModel:
        """A model of the same weights and processor (deep copies) on `device` (default: this
        one's), as a fresh load would give it: no counters, adapters or hooks of its own. It shares
        this one's encoding caches (an encoding is the processor's alone, and the processor is the
        same), so the target, the base and the reference models encode each example once between
        them. Meant for an untouched base model; a copy of a transformed one keeps its transforms."""
        model = deepcopy(self.model).eval()
        device = device or str(self.device)
        return VisionLanguageModel(model, deepcopy(self.processor), self.info, device, self._encodings)

    def to(self, device: str) -> VisionLanguageModel:
        """The model moved to `device`, in place."""
        self.model.to(device)
        self.device = torch.device(device)
        return self

    # -- encoding -------------------------------------------------------------------------
    def prompt_text(self, example: Example) -> str:
        content = ([{"type": "image"}] if example.image is not None else []) + [
            {"type": "text", "text": example.prompt}
        ]
        return self.processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )

    def encode(self, examples: Sequence[Example], targets: Sequence[str] | None = None) -> dict:
        """Left-padded batch; `labels` mark only the target tokens (-100 elsewhere).

        Prompt and target are tokenised apart and concatenated (as lm-eval does), so the
        target's tokens are exactly those scored, whatever the tokenizer merges across them.
        """
        rows, label_rows, images = [], [], []
        for i, example in enumerate(examples):
            ids, image = self._prompt_ids(example), self._pixels(example)
            if image is not None:
                images.append(image)
            target_ids = self._target_ids(targets[i]) if targets else []
            if targets and example.ends_with_eos:
                target_ids = target_ids + [self.tokenizer.eos_token_id]
            ids = self._keep_placeholders(list(ids))
            rows.append(ids + target_ids)
            label_rows.append([-100] * len(ids) + target_ids)
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        labels = torch.tensor([[-100] * (width - len(r)) + r for r in label_rows])
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        self.tokens_encoded += int(attention_mask.sum())
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if images:
            batch.update({key: torch.cat([image[key] for image in images]) for key in self.arch.image_inputs})
        if self.arch.mrope:  # the model's own 3-D positions; token pruning re-places the kept tokens
            kept = torch.arange(self.visual_tokens_kept).expand(len(images), -1)
            grid = batch.get("image_grid_thw")
            batch["position_ids"] = mrope_positions(self.model, input_ids, attention_mask, grid, kept)
        else:  # positions count real tokens only, so left padding changes nothing
            batch["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        self.last_batch = {k: v.to(self.device) for k, v in batch.items()}
        return self.last_batch

    # Training revisits every example each epoch and the audit scores each one several times;
    # running the processor (chat template, tokenizer, image resizing) on every batch was a
    # fifth of a non-private step's CPU time. Both halves are per-example functions, so caching
    # them changes no tensor.
    def _prompt_ids(self, example: Example) -> tuple[int, ...]:
        """The prompt's token ids, each image placeholder expanded to its visual tokens."""
        ids = self._encodings.prompt_ids.get(example)
        if ids is None:  # the processor itself expands the placeholders (its count is per model)
            images = [self._image(example.image)] if example.image is not None else None
            enc = self.processor(text=[self.prompt_text(example)], images=images, return_tensors=None, padding=False)
            ids = self._encodings.prompt_ids[example] = tuple(enc["input_ids"][0])
        return ids

    def _image(self, path: Path) -> Image.Image:
        return self.arch.prepare_image(load_image(Path(path)), self.processor)

    def _pixels(self, example: Example) -> dict[str, torch.Tensor] | None:
        """The image's model inputs (`pixel_values` and what travels with them), kept while
        they fit `PIXEL_CACHE_BYTES`."""
        if example.image is None:
            return None
        key = Path(example.image)
        cache = self._encodings
        pixels = cache.pixels.get(key)
        if pixels is None:
            out = self.processor.image_processor([self._image(key)], return_tensors="pt")
            pixels = {k: out[k] for k in self.arch.image_inputs}
            size = sum(v.numel() * v.element_size() for v in pixels.values())
            if cache.pixel_bytes + size <= self.PIXEL_CACHE_BYTES:
                cache.pixels[key] = pixels
                cache.pixel_bytes += size
        return pixels

    def _keep_placeholders(self, ids: list[int]) -> list[int]:
        """Only `visual_tokens_kept` of each image's run of placeholders (token pruning)."""
        n, k = self.visual_tokens_per_image, self.visual_tokens_kept
        if k == n:
            return ids
        out, run = [], 0
        for t in ids:
            run = run + 1 if t == self.image_token_id else 0
            if run == 0 or (run - 1) % n < k:
                out.append(t)
        return out

    @lru_cache(maxsize=4096)
    def _target_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # -- losses and scores ----------------------------------------------------------------
    def forward_target_logits(self, batch: dict, model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits that predict each target position, and those targets (B, T, V), (B, T).

        Targets sit at the end of each left-padded row, so only the last T+1 positions'
        logits are computed: the LM head never runs over the prompt.
        """
        labels = batch["labels"]
        n_target = int((labels != -100).sum(-1).max())
        if n_target == 0:
            raise ValueError("batch has no target tokens")
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.autocast(self.device.type, dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            out = (model or self.model)(**inputs, logits_to_keep=n_target + 1)
        return out.logits[:, :-1].float(), labels[:, -n_target:]

    @contextmanager
    def training_precision(self, precision: str) -> Iterator[None]:
        """Forwards under bf16 autocast within (`precision` "bf16"): the parameters, their
        gradients and the optimiser state stay fp32 (Opacus casts per-sample gradients up to
        the parameters' dtype before clipping); the loss is taken on fp32 logits."""
        self.autocast = AUTOCAST[precision]
        try:
            yield
        finally:
            self.autocast = None

    def per_example_loss(self, batch: dict, model=None) -> torch.Tensor:
        """Mean negative log-likelihood over each example's own target tokens, shape (B,)."""
        logits, targets = self.forward_target_logits(batch, model)
        nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
        mask = (targets != -100).float()
        return (nll * mask).sum(-1) / mask.sum(-1).clamp(min=1)

    def token_logprobs(self, batch: dict, model=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of every target token (B, T) and its mask, for token-level attacks."""
        logits, targets = self.forward_target_logits(batch, model)
        logp = torch.log_softmax(logits, -1)
        mask = targets != -100
        picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked * mask, mask

    @torch.no_grad()
    def text_token_stats(self, batch: dict) -> dict[str, torch.Tensor]:
        """Per text token (prompt and target; no pads, no image placeholders): the token's
        log-probability and the mean and std of log p under the model's own next-token
        distribution (what Min-K%++ normalises by). Tensors of shape (B, L-1) with a mask; and
        `loss` (B,), each example's mean NLL of its target tokens read off the same logits (the
        attacks' loss signal, so one forward gives both, under one draw of any token pruning)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = self.model(**inputs).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1)
        nxt = batch["input_ids"][:, 1:]
        mask = (batch["attention_mask"][:, 1:] == 1) & (nxt != self.image_token_id)
        probs = logp.exp()
        mu = (probs * logp).sum(-1)
        sigma = ((probs * logp.pow(2)).sum(-1) - mu.pow(2)).clamp(min=1e-12).sqrt()
        token = logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
        targets = batch["labels"][:, 1:] != -100
        loss = -(token * targets).sum(-1) / targets.sum(-1).clamp(min=1)
        return {"logp": token, "mu": mu, "sigma": sigma, "mask": mask, "loss": loss}

    @torch.no_grad()
    def choice_loglikelihoods(self, examples: Sequence[Example]) -> list[list[float]]:
        """Sum log-likelihood of each choice continuation (lm-eval's multiple-choice rule)."""
        return [[ll for ll, _ in row] for row in self.choice_scores(examples)]

    @torch.no_grad()
    def choice_scores(self, examples: Sequence[Example]) -> list[list[tuple[float, bool]]]:
        """(sum log-likelihood, is greedy) of each choice continuation: what lm-eval's
        `loglikelihood` returns per request."""
        self.model.eval()
        ids = [[self._target_ids(c) for c in e.choices] for e in examples]
        if all(len(t) == 1 for row in ids for t in row):  # one forward; the next token scores every choice
            batch = self.encode(examples)
            logits = self.model(**{k: v for k, v in batch.items() if k != "labels"}, logits_to_keep=1).logits
            logp = torch.log_softmax(logits[:, -1].float(), -1)
            best = logp.argmax(-1).tolist()
            return [[(float(logp[i, t[0]]), best[i] == t[0]) for t in row] for i, row in enumerate(ids)]
        flat = [(e, c) for e in examples for c in e.choices]
        batch = self.encode([e for e, _ in flat], [c for _, c in flat])
        logits, targets = self.forward_target_logits(batch)
        logp = torch.log_softmax(logits, -1)
        mask = targets != -100
        picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
        greedy = ((logp.argmax(-1) == targets) | ~mask).all(-1).tolist()
        scored = iter(zip(picked.sum(-1).tolist(), greedy))
        return [[next(scored) for _ in e.choices] for e in examples]

    @torch.no_grad()
    def generate(self, examples: Sequence[Example], max_new_tokens: int) -> list[str]:
        """Greedy continuation of each prompt (a left-padded batch): the new tokens only,
        decoded without special tokens and stripped."""
        self.model.eval()
        batch = self.encode(examples)
        # generate derives 1-D positions from the attention mask itself (left padding included)
        # and extends 3-D ones, which only the batch knows, by one per new token
        drop = ("labels",) if self.arch.mrope else ("labels", "position_ids")
        inputs = {k: v for k, v in batch.items() if k not in drop}
        out = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    # -- parameters -----------------------------------------------------------------------
    def set_trainable(self, groups: Iterable[str]) -> list[str]:
        groups = [g.strip() for g in groups if g.strip()]
        unknown = [g for g in groups if g not in self.PARAMETER_GROUPS]
        if unknown:
            raise DpbenchError(
                f"unknown trainable group(s) {', '.join(unknown)}; choose from {', '.join(self.PARAMETER_GROUPS)}"
            )
        prefixes = tuple(p for g in groups for p in self.PARAMETER_GROUPS[g])
        names = []
        for name, param in self.model.named_parameters():
            param.requires_grad_(name.startswith(prefixes))
            if param.requires_grad:
                names.append(name)
        return names

    def check_per_example_gradients(self) -> None:
        """DP-SGD needs every trainable layer to see one row per example (or per image, one
        image an example); raise where a trainable group sees all images as one sequence."""
        trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]
        flat = [g for g in self.arch.flat_groups if any(n.startswith(self.PARAMETER_GROUPS[g]) for n in trainable)]
        if flat:
            others = ",".join(g for g in self.PARAMETER_GROUPS if g not in self.arch.flat_groups)
            raise DpbenchError(
                f"{self.info.architecture}: DP-SGD cannot train {' or '.join(flat)} (its layers see all images as one "
                f"flat sequence, so Opacus cannot tell examples apart); use --trainable {others}"
            )

    def parameter_counts(self) -> tuple[int, int]:
        params = list(self.model.parameters())
        return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)

    @property
    def visual_tokens_per_image(self) -> int:
        return self._visual_tokens

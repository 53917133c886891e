"""Visual-token pruning between the projector and the language model: a model transform.

A hook on the projector's output (LLaVA's projector, Idefics3's connector; for Qwen2-VL the
per-image merger output that `get_image_features` returns) turns each image's N tokens into
k, and `VisionLanguageModel.encode` emits k image placeholders per image, so masks and labels
stay consistent. Positions: 1-D ones count the kept tokens; Qwen2-VL's 3-D M-RoPE positions
give each kept token the position it has in the unpruned sequence (as FastV and VisionZip do
for Qwen2-VL). Selection is per image, from that image's own vision features and its own
prompt only: per-example gradients (and so Opacus' clipping) never mix examples. Kept tokens
stay in their original order. The per-architecture hook points are in `pruning_adapters`.

The spec names it (`dpbench.models.pruning_spec.TokenPruning`); the run phases install it
after LoRA and the trainable groups, before the method's own preparation.

Strategies (`STRATEGIES`, selected by name):
  cls-attention  the patches the vision tower's [CLS] attends to most (heads averaged, at the
                 layer whose output the projector reads); towers without a [CLS] (SigLIP in
                 Idefics3, Qwen2-VL's ViT, LLaVA's "full" features) use the mean attention each
                 token receives there instead
  text-guided    the projected tokens most cosine-similar to the mean input embedding of the
                 example's prompt text (target tokens excluded)
  merge          VisionZip: dominant tokens by [CLS] attention plus a few contextual tokens,
                 each a centre + the mean of the remaining tokens most similar to it
                 (54 : 10 as in VisionZip)
  random         a fresh seeded subset per forward: the control, and dualpriv's default (it
                 beat the informed strategies on the embedded validation split: benchmarks/README.md)
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from dpbench.errors import DpbenchError
from dpbench.models.pruning_spec import STRATEGIES, TokenPruning

__all__ = ["STRATEGIES", "Images", "TokenPruner", "TokenPruning", "install_token_pruning", "merge"]

CONTEXTUAL_SHARE = 10 / 64  # VisionZip's 54 dominant + 10 contextual of 64 kept


class Images:
    """One projector call's images, with the cues a strategy may ask for (computed on demand)."""

    def __init__(self, tokens: torch.Tensor, pruner: TokenPruner):
        self.tokens = tokens  # (n_images, N, D), the projector's output
        self.pruner = pruner
        self.generator = pruner.generator
        self.noise_std = pruner.fused_noise_std if pruner.adapter.projector.training else 0.0
        self.kept: torch.Tensor | None = None  # (n_images, k): which token each output token stands for

    def take(self, idx: torch.Tensor) -> torch.Tensor:
        """The tokens at `idx` (n_images, k), in their original order; records them as kept."""
        self.kept = idx.sort(-1).values.to(self.tokens.device)
        return gather_tokens(self.tokens, self.kept)

    def cls_attention(self) -> torch.Tensor:
        """(n_images, N): attention from [CLS] to each token, heads averaged; without a [CLS]
        the mean attention each token receives stands in (the adapter computes it)."""
        captured = self.pruner.captured.get("vision")
        scores = None
        if captured is not None:
            with torch.no_grad():
                scores = self.pruner.adapter.attention_scores(*captured)
        if scores is None or scores.shape != self.tokens.shape[:2]:
            raise DpbenchError("token pruning saw no vision-tower attention input for these images")
        return scores.to(self.tokens.device)

    def text_query(self) -> torch.Tensor:
        """(n_images, D): mean input embedding of the prompt text of each image's example."""
        ids, mask = self.pruner.lm_inputs()
        model, image_id = self.pruner.model, self.pruner.model.image_token_id
        text = (ids != image_id) if mask is None else (mask == 1) & (ids != image_id)
        last = model.last_batch
        if last is not None and last.get("input_ids") is ids:  # an `encode` batch: drop the targets
            text &= last["labels"] == -100
        with torch.no_grad():
            table = self.pruner.adapter.embeddings.weight
            rows, cols = text.nonzero(as_tuple=True)
            sums = torch.zeros(ids.shape[0], table.shape[1], device=table.device, dtype=torch.float32)
            sums.index_add_(0, rows.to(table.device), table[ids[rows, cols].to(table.device)].float())
            means = sums / text.sum(-1, keepdim=True).clamp(min=1).to(sums)
            per_row = (ids == image_id).sum(-1) // self.pruner.k
            row_of_image = torch.repeat_interleave(torch.arange(ids.shape[0], device=per_row.device), per_row)
        if row_of_image.numel() != self.tokens.shape[0]:
            raise DpbenchError(
                f"{self.tokens.shape[0]} images but placeholders for {row_of_image.numel()} "
                f"(each image needs {self.pruner.k}); encode the batch with the pruned model"
            )
        return means[row_of_image.to(means.device)].to(self.tokens.device)


Strategy = Callable[[Images, int], torch.Tensor]  # (images, k) -> (n_images, k, D)


def gather_tokens(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """tokens[i, idx[i]] in ascending index order: kept tokens keep their original order."""
    idx = idx.sort(-1).values.to(tokens.device)
    return tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


@STRATEGIES.register("cls-attention")
def cls_attention(images: Images, k: int) -> torch.Tensor:
    return images.take(images.cls_attention().topk(k, -1).indices)


@STRATEGIES.register("text-guided")
def text_guided(images: Images, k: int) -> torch.Tensor:
    query = images.text_query()
    similarity = F.cosine_similarity(images.tokens.detach().float(), query[:, None].float(), dim=-1)
    return images.take(similarity.topk(k, -1).indices)


@STRATEGIES.register("random")
def random_tokens(images: Images, k: int) -> torch.Tensor:
    n, total = images.tokens.shape[:2]
    idx = torch.stack([torch.randperm(total, generator=images.generator)[:k] for _ in range(n)])
    return images.take(idx)


@STRATEGIES.register("merge")
def merge(images: Images, k: int) -> torch.Tensor:
    """VisionZip: dominant tokens by [CLS] attention + contextual tokens (centre + cluster mean)."""
    tokens = images.tokens
    n, total, dim = tokens.shape
    n_ctx = round(k * CONTEXTUAL_SHARE)
    dominant = images.cls_attention().topk(k - n_ctx, -1).indices.to(tokens.device)
    if n_ctx == 0:
        return images.take(dominant)
    is_dominant = torch.zeros(n, total, dtype=torch.bool, device=tokens.device).scatter_(1, dominant, True)
    rest = (~is_dominant).nonzero()[:, 1].view(n, -1)  # the others, in order, (n, R)
    step = max(1, rest.shape[1] // n_ctx)
    is_centre = torch.zeros(rest.shape[1], dtype=torch.bool, device=tokens.device)
    is_centre[torch.arange(0, rest.shape[1], step, device=tokens.device)[:n_ctx]] = True
    centres, members = rest[:, is_centre], rest[:, ~is_centre]
    take = lambda idx: tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, dim))  # noqa: E731
    centre_tokens, member_tokens = take(centres), take(members)
    with torch.no_grad():
        sim = F.normalize(member_tokens.float(), dim=-1) @ F.normalize(centre_tokens.float(), dim=-1).transpose(1, 2)
        assign = F.one_hot(sim.argmax(-1), n_ctx).to(tokens.dtype)  # (n, R - n_ctx, n_ctx)
    counts = assign.sum(1).clamp(min=1).unsqueeze(-1)
    contextual = centre_tokens + assign.transpose(1, 2) @ member_tokens / counts
    if images.noise_std > 0:  # DESIGN: DP-scale noise on fused tokens (a heuristic, not accounted)
        noise = torch.randn(contextual.shape, generator=images.generator).to(contextual)
        contextual = contextual + images.noise_std * noise
    order = torch.cat([dominant, centres], 1).argsort(-1)
    images.kept = torch.cat([dominant, centres], 1).sort(-1).values  # a contextual token sits at its centre
    merged = torch.cat([take(dominant), contextual], 1)
    return merged.gather(1, order.unsqueeze(-1).expand(-1, -1, dim))


class TokenPruner:
    """Installed token pruning: hooks on one model; `remove()` undoes it."""

    def __init__(self, model, config: TokenPruning):
        if not config.enabled:
            raise DpbenchError("token pruning 'none' keeps every token: there is nothing to install")
        self.model, self.config = model, config
        self.adapter = model.arch.pruning_adapter(model.model)
        self.n = model.visual_tokens_per_image
        self.k = config.kept(self.n)
        self.strategy = STRATEGIES.get(config.strategy)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.fused_noise_std = 0.0  # merge: std of Gaussian noise on contextual tokens in training
        self.captured: dict[str, Any] = {}
        self.kept: torch.Tensor | None = None  # the latest images' kept token indices (n_images, k)
        self.handles = self.adapter.install(self)
        model.visual_tokens_kept = self.k
        model.token_pruner = self

    def _on_vision(self, module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)  # the attention's input
        if hidden is not None:
            self.captured["vision"] = (hidden.detach(), kwargs)

    def _on_lm(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None or kwargs.get("pixel_values") is None:  # no images in this call: nothing to keep
            self.captured.pop("lm", None)
        else:
            self.captured["lm"] = (ids, kwargs.get("attention_mask"))

    def lm_inputs(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids and attention mask of the batch the current images belong to: those the
        language-model entry was called with or, when `generate` encodes the images before its
        first forward, the latest `encode` batch (the one being generated from)."""
        if "lm" in self.captured:
            return self.captured["lm"]
        last = self.model.last_batch
        if last is None:
            raise DpbenchError("token pruning saw no input_ids for these images")
        return last["input_ids"], last["attention_mask"]

    def _on_projector(self, module, args, output: torch.Tensor) -> torch.Tensor:
        return self.prune(output)

    def prune(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n_images, N, D) -> (n_images, k, D); which tokens were kept lands in `self.kept`."""
        try:
            if tokens.shape[1] != self.n:
                raise DpbenchError(f"projector gave {tokens.shape[1]} tokens per image, expected {self.n}")
            images = Images(tokens, self)
            out = self.strategy(images, self.k)  # keep 1.0 runs it too: tested identity
            self.kept = images.kept
            return out
        finally:
            self.captured.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.model.visual_tokens_kept = self.n
        self.model.token_pruner = None

    def details(self) -> dict[str, Any]:
        d = {
            "strategy": self.config.strategy,
            "keep_ratio": self.config.keep_ratio,
            "keep_count": self.config.keep_count,
            "visual_tokens_before": self.n,
            "visual_tokens_after": self.k,
        }
        if self.config.strategy == "merge":
            n_ctx = round(self.k * CONTEXTUAL_SHARE)
            d.update(dominant=self.k - n_ctx, contextual=n_ctx, fused_noise_std=self.fused_noise_std)
        return d


def install_token_pruning(model, config: TokenPruning) -> TokenPruner:
    """Prune `model`'s visual tokens from now on (training and evaluation alike)."""
    return TokenPruner(model, config)

"""Visual-token pruning on the real (tiny, random) LLaVA: identity at keep 1.0, aligned
batches, per-example gradients, and what each strategy keeps."""

from dataclasses import replace

import pytest
import torch

from dpbench import phases
from dpbench.errors import DpbenchError
from dpbench.methods import grad_samplers  # noqa: F401  (the RMSNorm rule)
from dpbench.methods.base import METHODS
from dpbench.models.token_pruning import STRATEGIES, Images, TokenPruning, install_token_pruning, merge
from dpbench.spec import RunSpec

DETERMINISTIC = [s for s in STRATEGIES.names() if s != "random"]


@pytest.fixture
def examples(digit_examples):
    """Prompts of different lengths, so rows are left-padded differently."""
    return [replace(e, prompt=e.prompt + " Think." * i) for i, e in enumerate(digit_examples[:4])]


@pytest.fixture
def prune(tiny_model):
    installed = []

    def install(strategy, keep_ratio=0.25, **kw):
        installed.append(install_token_pruning(tiny_model, TokenPruning(strategy, keep_ratio, **kw)))
        return installed[-1]

    yield install
    for p in installed:
        p.remove()
    tiny_model.model.eval()


def logits(model, batch):
    with torch.no_grad():
        return model.model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def kept_tokens(model, batch):
    """The projector's output after pruning (a hook registered after the pruner's sees it)."""
    seen = []
    handle = model.model.model.multi_modal_projector.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    logits(model, batch)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_keep_ratio_one_is_the_unpruned_forward(tiny_model, examples, prune, strategy):
    targets = [e.target for e in examples]
    reference = logits(tiny_model, tiny_model.encode(examples, targets))
    prune(strategy, keep_ratio=1.0)
    torch.testing.assert_close(logits(tiny_model, tiny_model.encode(examples, targets)), reference)


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_pruned_batches_keep_text_masks_and_labels_aligned(tiny_model, examples, prune, strategy):
    targets = [e.target for e in examples]
    full = tiny_model.encode(examples, targets)
    pruner = prune(strategy, keep_ratio=0.25)
    assert pruner.k == round(0.25 * tiny_model.visual_tokens_per_image) == tiny_model.visual_tokens_kept
    batch = tiny_model.encode(examples, targets)
    image = tiny_model.image_token_id
    for i in range(len(examples)):

        def text(b):  # (token, label) at every real, non-image position
            keep = (b["attention_mask"][i] == 1) & (b["input_ids"][i] != image)
            return b["input_ids"][i][keep].tolist(), b["labels"][i][keep].tolist()

        assert text(batch) == text(full)  # same text, same targets: only placeholders differ
        placeholders = (batch["input_ids"][i] == image).nonzero().flatten()
        assert len(placeholders) == pruner.k and (placeholders.diff() == 1).all()  # one run of k
        assert (batch["labels"][i][placeholders] == -100).all()
        real = batch["attention_mask"][i] == 1
        assert batch["position_ids"][i][real].tolist() == list(range(int(real.sum())))
    n_target = int((full["labels"] != -100).sum(-1).max())
    assert torch.equal(batch["labels"][:, -n_target:], full["labels"][:, -n_target:])
    assert batch["input_ids"].shape[1] == full["input_ids"].shape[1] - (tiny_model.visual_tokens_per_image - pruner.k)
    loss = tiny_model.per_example_loss(batch)  # the model accepts k placeholders per image
    assert loss.shape == (len(examples),) and torch.isfinite(loss).all()


@pytest.mark.parametrize("strategy", DETERMINISTIC)
def test_per_example_gradients_with_pruning_match_one_by_one_autograd(
    tiny_model, examples, prune, strategy, assert_per_example_gradients_match
):
    prune(strategy, keep_ratio=0.25)
    tiny_model.set_trainable(["projector", "language_model"])
    params = [p for p in tiny_model.model.parameters() if p.requires_grad]
    assert_per_example_gradients_match(tiny_model, examples, params)


def test_cls_attention_is_the_vision_towers_own_attention_and_picks_its_top_patches(tiny_model, examples, prune):
    pruner = prune("cls-attention", keep_ratio=0.25)
    batch = tiny_model.encode(examples[:2])
    scores = []
    original = pruner.strategy
    pruner.strategy = lambda images, k: (scores.append(images.cls_attention()), original(images, k))[1]
    kept = kept_tokens(tiny_model, batch)
    with torch.no_grad():
        tower = tiny_model.model.model.vision_tower
        out = tower(batch["pixel_values"], output_attentions=True, output_hidden_states=True)
        layer = tiny_model.model.config.vision_feature_layer  # the layer whose output LLaVA projects
        expected = out.attentions[layer].mean(1)[:, 0, 1:]  # [CLS] row, heads averaged, patches only
        features = tiny_model.model.model.multi_modal_projector.forward(out.hidden_states[layer][:, 1:])  # unhooked
    pruner.strategy = original
    torch.testing.assert_close(scores[0], expected)
    top = expected.topk(pruner.k, -1).indices.sort(-1).values
    torch.testing.assert_close(kept, features.gather(1, top.unsqueeze(-1).expand(-1, -1, features.shape[-1])))


def test_text_guided_reads_the_prompt_never_the_target(tiny_model, examples, prune):
    prune("text-guided", keep_ratio=0.25)
    a = kept_tokens(tiny_model, tiny_model.encode(examples, ["A"] * 4))
    b = kept_tokens(tiny_model, tiny_model.encode(examples, ["B B B B"] * 4))
    torch.testing.assert_close(a, b)
    c = kept_tokens(tiny_model, tiny_model.encode([replace(e, prompt="Zebra?") for e in examples], ["A"] * 4))
    assert not torch.equal(a, c)  # the question does steer it


class FakeImages(Images):
    def __init__(self, tokens, scores, noise_std=0.0):
        self.tokens, self.scores, self.noise_std = tokens, scores, noise_std
        self.generator = torch.Generator().manual_seed(0)

    def cls_attention(self):
        return self.scores


def test_merge_keeps_dominant_tokens_in_order_and_fuses_the_rest_into_centres():
    torch.manual_seed(0)
    tokens, scores = torch.randn(2, 64, 8), torch.rand(2, 64)
    out = merge(FakeImages(tokens, scores), 16)  # 14 dominant + 2 contextual, as VisionZip's 54:10
    assert out.shape == (2, 16, 8)
    for i in range(2):
        dominant = scores[i].topk(14).indices.sort().values
        rest = [j for j in range(64) if j not in set(dominant.tolist())]
        centres, members = rest[0::25][:2], [j for j in rest if j not in rest[0::25][:2]]
        unit = torch.nn.functional.normalize(tokens[i], dim=-1)
        sim = unit[members] @ unit[centres].T
        owner = sim.argmax(-1)
        expected = {d: tokens[i, d] for d in dominant.tolist()}
        for c, centre in enumerate(centres):
            group = tokens[i, members][owner == c]
            expected[centre] = tokens[i, centre] + (group.mean(0) if len(group) else 0)
        torch.testing.assert_close(out[i], torch.stack([expected[j] for j in sorted(expected)]))


def test_random_is_seeded(tiny_model, examples, prune):
    runs = []
    for _ in range(2):
        pruner = prune("random", keep_ratio=0.25, seed=3)
        runs.append(kept_tokens(tiny_model, tiny_model.encode(examples)))
        pruner.remove()
    torch.testing.assert_close(runs[0], runs[1])


def test_keep_count_wins_and_bad_options_fail_early():
    assert TokenPruning("merge", 0.25, keep_count=10).kept(64) == 10
    assert TokenPruning("merge", 0.01).kept(64) == 1
    with pytest.raises(DpbenchError, match="Did you mean merge"):
        TokenPruning("merg")
    with pytest.raises(DpbenchError, match="keep_ratio"):
        TokenPruning("merge", 1.5)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_runs_under_the_specs_token_pruning(tiny_model, name):
    spec = RunSpec.from_dict({"method": name, "token_pruning": {"strategy": "cls-attention", "keep_ratio": 0.5}})
    phases.adapt(tiny_model, spec, phases.make_method(spec))
    try:
        assert tiny_model.visual_tokens_kept == tiny_model.visual_tokens_per_image // 2
    finally:
        tiny_model.token_pruner.remove()
    assert tiny_model.visual_tokens_kept == tiny_model.visual_tokens_per_image
    assert not RunSpec.from_dict({"method": name, "token_pruning": "none"}).token_pruning.enabled

"""Qwen2-VL and Idefics3 (tiny, random, saved and loaded like any local checkpoint) through what
dpbench does with a model: encoding, losses, scores, generation, DP-SGD and visual-token
pruning. Each test would fail if that architecture's wiring were wrong."""

import copy
import json
from dataclasses import replace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from dpbench.errors import DpbenchError
from dpbench.methods.dpsgd import train_dp_sgd
from dpbench.models.architectures import architecture
from dpbench.models.loading import load_model
from dpbench.models.qwen2_vl import image_only_qwen2_vl_processor
from dpbench.models.random_init_processors import IDEFICS_TEMPLATE, QWEN_TEMPLATE
from dpbench.models.token_pruning import STRATEGIES, TokenPruning, install_token_pruning
from dpbench.spec import RunSpec

SIDE = 32  # px: 8 x 8 patches of 4 px, merged 2 x 2 into 16 visual tokens, in every model here
TOKENS = 16
CORPUS = ["Which digit is shown in the image? A. 3 B. 7 Answer with the option's letter directly. Think."] * 5


def build_tokenizer(specials: list[str], image_token: str) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>", *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": image_token},
    )


def text_config(tok) -> dict:
    return dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,  # ghost clipping
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def save_qwen2_vl(path) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    tok = build_tokenizer(
        ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"],
        "<|image_pad|>",
    )
    images = Qwen2VLImageProcessorPil(
        patch_size=4,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=16 * 16,
        max_pixels=SIDE * SIDE,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    ids = tok.convert_tokens_to_ids
    config = Qwen2VLConfig(
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=32,
            num_heads=4,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            mlp_ratio=2,
        ),
        # head_dim 8: 4 rotary frequencies, split temporal 2 : height 1 : width 1
        text_config=dict(
            text_config(tok),
            rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(path)
    image_only_qwen2_vl_processor()(image_processor=images, tokenizer=tok, chat_template=QWEN_TEMPLATE).save_pretrained(
        path
    )
    meta = json.loads((path / "processor_config.json").read_text())  # as published checkpoints name it
    (path / "processor_config.json").write_text(json.dumps(dict(meta, processor_class="Qwen2VLProcessor")))


def save_idefics3(path, smolvlm: bool = False) -> None:
    from transformers import Idefics3Processor

    if smolvlm:
        from transformers import SmolVLMConfig as Config
        from transformers import SmolVLMForConditionalGeneration as Model
        from transformers import SmolVLMImageProcessorPil as ImageProcessor
    else:
        from transformers import Idefics3Config as Config
        from transformers import Idefics3ForConditionalGeneration as Model
        from transformers import Idefics3ImageProcessorPil as ImageProcessor
    tok = build_tokenizer(["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"], "<image>")
    # image splitting on, as published: loading must turn it off
    images = ImageProcessor(
        do_image_splitting=True,
        max_image_size={"longest_edge": SIDE},
        size={"longest_edge": 2 * SIDE},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    config = Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=SIDE,
            patch_size=4,
        ),
        text_config=dict(model_type="llama", **text_config(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    Model(config).save_pretrained(path)
    Idefics3Processor(
        image_processor=images, tokenizer=tok, image_seq_len=TOKENS, chat_template=IDEFICS_TEMPLATE
    ).save_pretrained(path)


BUILDERS = {"qwen2_vl": save_qwen2_vl, "idefics3": save_idefics3, "smolvlm": lambda p: save_idefics3(p, smolvlm=True)}
ARCHS = ["qwen2_vl", "idefics3"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # matrices this small gain nothing from a second thread, and on a shared 2-core machine
    # thread contention made a forward 50x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    paths, loaded = {}, {}

    def get(name, fresh=False):
        """The shared instance of the saved model, or with `fresh` one of its own."""
        if name not in paths:
            paths[name] = tmp_path_factory.mktemp(name)
            BUILDERS[name](paths[name])
        if fresh:
            return load_model(str(paths[name]), "cpu")
        if name not in loaded:
            loaded[name] = load_model(str(paths[name]), "cpu")
        return loaded[name]

    return get


@pytest.fixture(params=ARCHS)
def model(request, checkpoints):
    m = checkpoints(request.param)
    state = copy.deepcopy(m.model.state_dict())
    yield m
    m.model.load_state_dict(state)
    m.model.zero_grad(set_to_none=True)
    m.model.eval()


@pytest.fixture
def examples(digit_examples):
    """Prompts of different lengths, so rows are left-padded differently."""
    return [replace(e, prompt=e.prompt + " Think." * i) for i, e in enumerate(digit_examples[:4])]


@pytest.fixture
def prune(model):
    installed = []

    def install(strategy, keep_ratio=0.5):
        installed.append(install_token_pruning(model, TokenPruning(strategy, keep_ratio)))
        return installed[-1]

    yield install
    for p in installed:
        p.remove()


def dp_groups(model) -> list[str]:
    return [g for g in model.PARAMETER_GROUPS if g not in model.arch.flat_groups]


def native_inputs(model, example, new_tokens=()):
    """The processor's own tensors for one example (HF computes Qwen2-VL's M-RoPE from them)."""
    text = model.prompt_text(example)
    enc = model.processor(text=[text], images=[model._image(example.image)], return_tensors="pt")
    enc = {k: v for k, v in enc.items() if k != "text_replacement_offsets"}
    if new_tokens:
        extra = torch.tensor([list(new_tokens)])
        enc["input_ids"] = torch.cat([enc["input_ids"], extra], 1)
        enc["attention_mask"] = torch.cat([enc["attention_mask"], torch.ones_like(extra)], 1)
        if "mm_token_type_ids" in enc:
            enc["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(extra)], 1)
    return enc


def logits(model, batch):
    with torch.no_grad():
        return model.model(**{k: v for k, v in batch.items() if k != "labels"}).logits


# -- loading and encoding -------------------------------------------------------------------------
def test_loads_as_its_own_architecture_with_fixed_visual_tokens(model, examples):
    config = model.model.config
    assert model.info.architecture == config.model_type in ARCHS
    assert model.visual_tokens_per_image == TOKENS
    if config.model_type == "idefics3":
        assert model.processor.image_processor.do_image_splitting is False  # saved True
    batch = model.encode(examples, [e.target for e in examples])
    placeholders = batch["input_ids"] == model.image_token_id
    assert placeholders.sum(-1).tolist() == [TOKENS] * len(examples)
    groups = {g: set(model.set_trainable([g])) for g in model.PARAMETER_GROUPS}
    everything = {n for n, _ in model.model.named_parameters()}
    assert all(groups.values()) and set.union(*groups.values()) == everything
    assert sum(map(len, groups.values())) == len(everything)  # disjoint


def test_batch_is_the_models_own_processing(model, examples):
    """Our encoding (Qwen2-VL: our 3-D positions) gives the logits of the processor's tensors,
    from which the model computes its positions itself."""
    for e in examples[:2]:
        ours = logits(model, model.encode([e]))
        torch.testing.assert_close(ours, logits(model, native_inputs(model, e)))


def test_left_padding_changes_no_per_example_loss(model, examples):
    examples = examples + [replace(examples[0], image=None, prompt="Which digit is seven?")]  # a text-only row
    batch = model.per_example_loss(model.encode(examples, [e.target for e in examples]))
    alone = torch.cat([model.per_example_loss(model.encode([e], [e.target])) for e in examples])
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-6)


def test_choice_loglikelihoods_are_each_choices_target_loglikelihood(model, examples):
    scores = model.choice_loglikelihoods(examples[:2])
    for e, row in zip(examples[:2], scores):
        for choice, score in zip(e.choices, row):
            expected = -model.per_example_loss(model.encode([e], [choice])) * len(model._target_ids(choice))
            assert score == pytest.approx(float(expected), rel=1e-5, abs=1e-5)


def test_generate_continues_as_full_forwards_do(model, examples):
    """Greedy tokens from full forwards over the processor's tensors (the model's own
    positions each time) are what `generate` gives, one by one and left-padded in a batch."""
    eos = model.tokenizer.eos_token_id
    expected = []
    for e in examples[:3]:
        new = []
        while len(new) < 3 and (not new or new[-1] != eos):
            new.append(int(logits(model, native_inputs(model, e, new))[0, -1].argmax()))
        expected.append(model.tokenizer.decode(new, skip_special_tokens=True).strip())
    assert [model.generate([e], 3)[0] for e in examples[:3]] == expected
    assert model.generate(examples[:3], 3) == expected


def positions_seen(model, generate) -> list[torch.Tensor]:
    """The position ids the language model gets at each step of `generate()` (Qwen2-VL: the 3-D ones)."""
    inner, seen = model.model.model, []
    lm = inner.language_model if model.arch.mrope else inner.text_model
    record = lambda m, a, kw: seen.append(kw["position_ids"][-3:] if model.arch.mrope else kw["position_ids"])  # noqa: E731
    handle = lm.register_forward_pre_hook(record, with_kwargs=True)
    try:
        generate()
    finally:
        handle.remove()
    return seen


def test_generate_gives_the_language_model_the_positions_hf_would(model, examples):
    """Against HF's own generate on the processor's tensors, at every step, each row of a
    left-padded batch (a model barely trained on images may pick the same tokens either way)."""
    ours = positions_seen(model, lambda: model.generate(examples[:3], 3))
    real = model.last_batch["attention_mask"] == 1
    for i, e in enumerate(examples[:3]):
        native = positions_seen(
            model,
            lambda: model.model.generate(
                **native_inputs(model, e), max_new_tokens=3, do_sample=False, pad_token_id=model.tokenizer.pad_token_id
            ),
        )
        assert torch.equal(ours[0][..., i, real[i]], native[0][..., 0, :])
        for step in range(1, len(native)):
            assert torch.equal(ours[step][..., i, :], native[step][..., 0, :])


# -- DP-SGD ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", [None, "merge"])
def test_per_example_gradients_match_one_by_one_autograd(
    model, examples, prune, strategy, assert_per_example_gradients_match
):
    if strategy is not None:
        prune(strategy, keep_ratio=0.5)
    params = [p for n, p in model.model.named_parameters() if n in set(model.set_trainable(dp_groups(model)))]
    assert_per_example_gradients_match(model, examples, params)


@pytest.mark.parametrize("clipping", ["per-sample", "ghost"])
def test_a_dp_sgd_step_changes_exactly_the_trainable_parameters(model, digit_examples, clipping):
    spec = RunSpec().replace(
        **{
            "training.steps": 1,
            "training.batch_size": 4,
            "training.physical_batch_size": 4,
            "training.lr": 1e-2,
            "privacy.epsilon": 8.0,
        }
    )
    trainable = set(
        model.set_trainable(["projector", "language_model"] if model.arch.name == "idefics3" else ["language_model"])
    )
    before = copy.deepcopy(model.model.state_dict())
    report = train_dp_sgd(model, digit_examples, spec, 1e-3, label="test", clipping=clipping)
    after = model.model.state_dict()
    assert report.steps == 1 and report.privacy.epsilon <= 8.0
    assert {n for n in before if not torch.equal(before[n], after[n])} == trainable


@pytest.mark.parametrize("method", ["nonprivate", "dpzo", "dualpriv"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_method_trains_every_architecture(checkpoints, digit_examples, arch, method):
    """One step of each registered method (dualpriv: merge token pruning + update pruning) moves
    the trainable weights and only them."""
    from dpbench import phases

    model = checkpoints(arch, fresh=True)  # the run phases install the method's hooks and pruning on it
    spec = RunSpec(method=method).replace(
        **{"training.steps": 1, "training.batch_size": 4, "training.physical_batch_size": 4, "training.lr": 1e-2}
    )
    trainable = set(model.set_trainable(dp_groups(model)))
    chosen = phases.make_method(spec)
    phases.adapt(model, spec, chosen)  # dualpriv: its default token pruning, keep 0.5
    before = copy.deepcopy(model.model.state_dict())
    report = chosen.train(model, digit_examples, spec, 1e-3 if chosen.private else None)
    after = model.model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert report.steps == 1 and changed and changed <= trainable
    if method != "dualpriv":  # its update pruning zeroes most coordinates, and whole small tensors may be left out
        assert changed == trainable
    if method == "dualpriv":
        assert model.visual_tokens_kept == model.visual_tokens_per_image // 2


@pytest.mark.parametrize("group", ["vision_tower", "projector"])
def test_dp_sgd_refuses_qwen2_vl_layers_that_see_no_examples(checkpoints, digit_examples, group):
    """Qwen2-VL's ViT and merger run on all patches as one sequence: Opacus would clip per patch."""
    model = checkpoints("qwen2_vl", fresh=True)  # Opacus' hooks stay on a model whose training raised
    spec = RunSpec().replace(**{"training.steps": 1, "training.batch_size": 4, "training.physical_batch_size": 4})
    model.set_trainable([group])
    before = copy.deepcopy(model.model.state_dict())
    with pytest.raises(
        DpbenchError, match=r"cannot train .*cannot tell examples apart\); use --trainable language_model$"
    ):
        train_dp_sgd(model, digit_examples, spec, 1e-3, label="test")
    after = model.model.state_dict()
    assert all(torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("method", ["dpsgd", "dualpriv", "dualpriv-token", "dualpriv-update"])
def test_every_per_example_gradient_method_refuses_in_prepare(checkpoints, method):
    """The runner calls `prepare` before it makes the run folder: a refusal leaves nothing behind."""
    from dpbench.methods.base import METHODS

    model = checkpoints("qwen2_vl", fresh=True)
    model.set_trainable(["projector", "language_model"])
    with pytest.raises(DpbenchError, match="use --trainable language_model$"):
        METHODS.get(method)().prepare(model)
    model.set_trainable(["language_model"])
    METHODS.get(method)().prepare(model)  # allowed


# -- token pruning --------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_keep_ratio_one_is_the_unpruned_forward(model, examples, prune, strategy):
    targets = [e.target for e in examples]
    reference = logits(model, model.encode(examples, targets))
    prune(strategy, keep_ratio=1.0)
    torch.testing.assert_close(logits(model, model.encode(examples, targets)), reference)


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_pruned_batches_hold_k_placeholders_per_image_and_give_finite_losses(model, examples, prune, strategy):
    targets = [e.target for e in examples]
    full = model.encode(examples, targets)
    pruner = prune(strategy, keep_ratio=0.5)
    assert pruner.k == TOKENS // 2 == model.visual_tokens_kept
    batch = model.encode(examples, targets)
    for i in range(len(examples)):
        placeholders = (batch["input_ids"][i] == model.image_token_id).nonzero().flatten()
        assert len(placeholders) == pruner.k and (placeholders.diff() == 1).all()
        text = lambda b: b["input_ids"][i][(b["attention_mask"][i] == 1) & (b["input_ids"][i] != model.image_token_id)]  # noqa: E731
        assert torch.equal(text(batch), text(full))
    loss = model.per_example_loss(batch)
    assert loss.shape == (len(examples),) and torch.isfinite(loss).all()
    kept = pruner.kept
    assert kept.shape == (len(examples), pruner.k) and (kept.diff() > 0).all() and kept.max() < TOKENS
    assert model.generate(examples[:2], 2) == [model.generate([e], 2)[0] for e in examples[:2]]


def test_qwen2_vl_kept_tokens_keep_their_unpruned_positions(checkpoints, examples):
    model = checkpoints("qwen2_vl")
    full = model.encode(examples)
    pruner = install_token_pruning(model, TokenPruning("random", 0.5, seed=1))
    seen = []
    handle = model.model.model.language_model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["position_ids"]), with_kwargs=True
    )  # after the pruner's own hook
    try:
        batch = model.encode(examples)
        logits(model, batch)
    finally:
        handle.remove()
        pruner.remove()
    image = model.image_token_id
    for i in range(len(examples)):
        real, pruned_real = full["attention_mask"][i] == 1, batch["attention_mask"][i] == 1
        full_pos, pos = full["position_ids"][:, i][:, real], seen[0][:, i][:, pruned_real]
        full_ids, ids = full["input_ids"][i][real], batch["input_ids"][i][pruned_real]
        torch.testing.assert_close(pos[:, ids != image], full_pos[:, full_ids != image])  # text: unchanged
        torch.testing.assert_close(pos[:, ids == image], full_pos[:, full_ids == image][:, pruner.kept[i]])
        assert not torch.equal(pos[:, ids == image], full_pos[:, full_ids == image][:, : pruner.k])


def received_attention(model, batch, monkeypatch) -> torch.Tensor:
    """(n_images, tokens): the mean attention each visual token receives at the last vision
    layer, from the model's own attention weights, patches pooled as the projector pools them."""
    inner = model.model.model
    if model.arch.name == "idefics3":
        pixels = batch["pixel_values"].flatten(0, 1)
        attn = inner.vision_model(pixels, output_attentions=True).attentions[-1]  # (n, heads, P, P)
        patches = attn.mean((1, 2))
        return inner.connector.pixel_shuffle(patches.unsqueeze(-1), inner.connector.scale_factor).mean(-1)
    from transformers.models.qwen2_vl import modeling_qwen2_vl

    weights, last, original = [], inner.visual.blocks[-1].attn, modeling_qwen2_vl.eager_attention_forward

    def recording(module, *args, **kwargs):
        out = original(module, *args, **kwargs)
        if module is last:
            weights.append(out[1])  # (1, heads, P, P), one image at a time
        return out

    monkeypatch.setattr(modeling_qwen2_vl, "eager_attention_forward", recording)
    inner.visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
    patches = torch.cat([w.mean((1, 2)) for w in weights])
    return patches.view(len(weights), -1, 4).mean(-1)  # a merged token is 4 consecutive patches


def test_cls_attention_without_a_cls_keeps_the_tokens_that_receive_most_attention(model, examples, prune, monkeypatch):
    batch = model.encode(examples)
    with torch.no_grad():
        reference = received_attention(model, batch, monkeypatch)
    monkeypatch.undo()
    pruner = prune("cls-attention", keep_ratio=0.5)
    scores = []
    original = pruner.strategy
    pruner.strategy = lambda images, k: (scores.append(images.cls_attention()), original(images, k))[1]
    logits(model, model.encode(examples))
    torch.testing.assert_close(scores[0], reference.float())
    assert torch.equal(pruner.kept, reference.topk(pruner.k, -1).indices.sort(-1).values)


# -- the registry ---------------------------------------------------------------------------------
def test_smolvlm_runs_through_idefics3s_adapters(checkpoints, examples):
    model = checkpoints("smolvlm")
    assert model.info.architecture == "smolvlm" and model.visual_tokens_per_image == TOKENS
    batch = model.per_example_loss(model.encode(examples, [e.target for e in examples]))
    alone = torch.cat([model.per_example_loss(model.encode([e], [e.target])) for e in examples])
    torch.testing.assert_close(batch, alone, rtol=1e-5, atol=1e-6)
    pruner = install_token_pruning(model, TokenPruning("merge", 0.5))
    try:
        loss = model.per_example_loss(model.encode(examples, [e.target for e in examples]))
        assert torch.isfinite(loss).all() and pruner.kept.shape == (len(examples), TOKENS // 2)
    finally:
        pruner.remove()


def test_an_unsupported_architecture_is_one_clear_error():
    with pytest.raises(DpbenchError, match="does not support 'blip_2' models; supported: .*qwen2_vl"):
        architecture("blip_2")

"""Public pre-training of the embedded tiny LLaVA, cached on disk, in LLaVA's own stages.

Stage 0 (the base language model, as Llama is trained before LLaVA exists): next-token
prediction on every token of a text-only corpus of number facts and lettered multiple choice.
Stage 1 (the vision encoder, as CLIP is trained before LLaVA exists): the vision tower
learns to tell the ten digit classes apart on the public images, with shifted copies as
augmentation. Stage 2 (LLaVA's alignment + instruction tuning, vision tower frozen): the
projector and language model learn captions and short questions about the public images,
plus text-only number facts and multiple-choice answering.

Only the *public* digit pool is used (never the private task's images). The private
ScienceQA-format task combines the skills in a format and with question types the model has
not seen together, so fine-tuning has work to do.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
import torch.nn.functional as F

from dpbench.examples import Example
from dpbench.tasks.digits import WORDS, public_digits
from dpbench.training_loop import TrainingLoop

CORPUS_VERSION = 6
# The recipe, stage by stage: with CORPUS_VERSION and tiny_llava's architecture it is the key
# that names the shipped weights, so a change here rebuilds the model.
PRETRAIN_LANGUAGE = dict(steps=5000, batch_size=32, lr=1e-3, seed=0, n=40000)
PRETRAIN_VISION = dict(steps=1000, batch_size=64, lr=2e-3, seed=0)
# stage 2 at half stage 0's rate: at 2e-3 it undid the text multiple choice stage 0 taught
PRETRAIN = dict(steps=3000, batch_size=32, lr=5e-4, seed=0)
SHIFTS = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
# LLaVA-1.5's instruction mix asks multiple choice in this very form (A-OKVQA, ScienceQA-style)
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDE"


def _image_examples(folder: Path, rng: random.Random, views: int = 3) -> list[Example]:
    out = []
    for d in public_digits():
        for v in range(views):  # the original and shifted copies: a ViT this small overfits otherwise
            view = d if v == 0 else d.shifted(*rng.choice(SHIFTS))
            path = folder / f"public_{d.index}_{v}.png"
            if not path.exists():
                view.image().save(path)
            w = WORDS[d.label]
            k = rng.choice([x for x in range(10) if x != d.label])
            pairs = [
                ("Describe the image.", f"A handwritten digit {w}."),
                ("What is written in the image?", f"The number {d.label}."),
                ("What number is shown?", str(d.label)),
                ("Write the number in the image as a word.", w),
                # open-ended versions of the number facts, so each skill is grounded in images
                ("Is this number even or odd?", "even" if d.label % 2 == 0 else "odd"),
                (f"Is this number bigger than {k}?", "yes" if d.label > k else "no"),
                _image_mc(d, rng),
                _image_mc(d, rng),
            ]
            for prompt, target in pairs:
                out.append(Example(uid=f"pub-{d.index}-{len(out)}", prompt=prompt, target=target, image=path))
    return out


def _mc(question: str, options: list[str], answer: int) -> tuple[str, str]:
    """Lettered multiple choice as LLaVA-1.5 is instruction-tuned on it. Matching an answer
    to its option letter is the skill a model this small learns slowest, so pre-training
    teaches it on public data; the private task's wordings, hints and the composition of
    reading an image with a number fact are left for fine-tuning."""
    lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return f"{question}\n{lines}\n{MC_INSTRUCTION}", LETTERS[answer]


def _options(rng: random.Random, truth, pool: list, low: int, high: int) -> tuple[list, int]:
    opts = [truth] + rng.sample([x for x in pool if x != truth], rng.randint(low, high) - 1)
    rng.shuffle(opts)
    return opts, opts.index(truth)


def _image_mc(d, rng: random.Random) -> tuple[str, str]:
    """Multiple choice about a public image: reading the digit, as a numeral or a word. Parity
    and comparison appear with images only as open questions, and as multiple choice only
    over text: their image-grounded multiple-choice form is the private task's."""
    opts, i = _options(rng, d.label, list(range(10)), 2, 5)
    if rng.random() < 0.5:
        return _mc("What number is shown?", [str(o) for o in opts], i)
    return _mc("What is this number as a word?", [WORDS[o] for o in opts], i)


def _text_examples(rng: random.Random, n: int) -> list[Example]:
    """Number facts and multiple choice over text only: no image, no private content."""
    out = []
    for i in range(n):
        a = rng.randrange(10)
        kind = rng.randrange(7)
        if kind == 0:
            prompt, target = f"Is {a} even or odd?", "even" if a % 2 == 0 else "odd"
        elif kind == 1:
            b = rng.randrange(10)
            prompt, target = f"Is {a} greater than {b}?", "yes" if a > b else "no"
        elif kind == 2:
            prompt, target = f"How is {a} written as a word?", WORDS[a]
        else:  # multiple choice: pick the option that matches a number given in the text
            k = rng.randint(2, 5)
            opts = [a] + rng.sample([x for x in range(10) if x != a], k - 1)
            rng.shuffle(opts)
            if kind == 3:
                q, shown = f"Which option is the number {WORDS[a]}?", [str(o) for o in opts]
            elif kind == 4:
                q, shown = f"Which option names the number {a}?", [WORDS[o] for o in opts]
            elif kind == 5:
                truth = "even" if a % 2 == 0 else "odd"
                shown = ["even", "odd"] if rng.random() < 0.5 else ["odd", "even"]
                q, opts, a = f"Is {a} even or odd?", shown, truth
            else:
                b = rng.choice([x for x in range(10) if x != a])
                truth = "yes" if a > b else "no"
                shown = ["yes", "no"] if rng.random() < 0.5 else ["no", "yes"]
                q, opts, a = f"Is {a} bigger than {b}?", shown, truth
            prompt, target = _mc(q, shown, opts.index(a))
        out.append(Example(uid=f"txt-{i}", prompt=prompt, target=target))
    return out


def corpus(folder: Path, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    examples = _image_examples(folder, rng) + _text_examples(rng, 6000)
    rng.shuffle(examples)
    return examples


def language_corpus(n: int, seed: int = 1) -> list[Example]:
    """Stage 0's text: fresh draws of the same text-only kinds (own seed), no images."""
    return _text_examples(random.Random(seed), n)


def tokenizer_corpus(examples: list[Example]) -> list[str]:
    """Text for the BPE merges: the pre-training corpus and the chat template's words."""
    return [f"USER: {e.prompt} ASSISTANT: {e.target}" for e in examples] + [
        "Context: Which digit is shown in the image? Which word names the number in the image?"
    ]


def _text_token_loss(model_wrapper, batch: dict) -> torch.Tensor:
    """Mean next-token NLL over every real token of the batch (prompt and answer, no pads)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model_wrapper.model(**inputs).logits[:, :-1].float()
    nxt = batch["input_ids"][:, 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), nxt, reduction="none")
    mask = (batch["attention_mask"][:, 1:] == 1).float()
    return (nll * mask).sum() / mask.sum()


def pretrain_language(
    model_wrapper, examples: list[Example], steps: int, batch_size: int, lr: float, seed: int
) -> list[float]:
    """Stage 0: the language model alone learns its text as a language model does, on every
    token. Answer-only loss never taught this model to match an answer to its option letter:
    from scratch on lettered multiple choice alone it stayed at chance, while next-token loss
    on every token learned it (benchmarks/README.md has the figures). Predicting an option
    that repeats a number from the question is what trains the copying (induction) circuit
    the letter lookup needs."""
    torch.manual_seed(seed)
    model = model_wrapper.model
    model.train()
    params = [p for p in model.model.language_model.parameters()] + list(model.lm_head.parameters())
    rng = random.Random(seed)

    def step_loss() -> torch.Tensor:
        part = rng.sample(examples, batch_size)
        return _text_token_loss(model_wrapper, model_wrapper.encode(part, [e.target + "</s>" for e in part]))

    losses = _optimise(
        params, step_loss, steps, lr, weight_decay=0.01, clip=1.0, label="pre-training stage 0: language model"
    )
    model.eval()
    return losses


def pretrain_vision(model_wrapper, steps: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """Stage 1: a linear read-out of the mean patch feature must name the digit class."""
    torch.manual_seed(seed)
    digits = [d.shifted(dx, dy) for d in public_digits() for dx, dy in SHIFTS]
    images = [d.image() for d in digits]
    pixels = model_wrapper.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    labels = torch.tensor([d.label for d in digits])
    tower = model_wrapper.model.model.vision_tower
    head = torch.nn.Linear(tower.config.hidden_size, 10)
    params = [p for p in tower.parameters() if p.requires_grad] + list(head.parameters())
    gen = torch.Generator().manual_seed(seed)
    tower.train()

    def step_loss() -> torch.Tensor:
        idx = torch.randint(0, len(digits), (batch_size,), generator=gen)
        features = tower(pixel_values=pixels[idx]).last_hidden_state[:, 1:].mean(1)
        return torch.nn.functional.cross_entropy(head(features), labels[idx])

    losses = _optimise(
        params, step_loss, steps, lr, weight_decay=0.05, clip=None, label="pre-training stage 1: vision encoder"
    )
    tower.eval()
    return losses


def pretrain(model_wrapper, examples: list[Example], steps: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """Stage 2: projector + language model on the multimodal and text corpus, vision frozen."""
    torch.manual_seed(seed)
    model = model_wrapper.model
    model.train()
    model.model.vision_tower.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    rng = random.Random(seed)

    def step_loss() -> torch.Tensor:
        batch_ex = rng.sample(examples, batch_size)
        # image and text-only examples go in separate forwards: LLaVA wants a pixel tensor
        # for every image placeholder in the batch
        loss = 0.0
        for part in ([e for e in batch_ex if e.image], [e for e in batch_ex if not e.image]):
            if part:
                batch = model_wrapper.encode(part, [e.target + "</s>" for e in part])
                loss = loss + model_wrapper.per_example_loss(batch).sum() / batch_size
        return loss

    losses = _optimise(
        params,
        step_loss,
        steps,
        lr,
        weight_decay=0.01,
        clip=1.0,
        label="pre-training stage 2: projector + language model",
    )
    model.eval()
    model.model.vision_tower.requires_grad_(True)
    return losses


def _optimise(
    params, step_loss, steps: int, lr: float, *, weight_decay: float, clip: float | None, label: str
) -> list[float]:
    """Every stage's loop: AdamW under a one-cycle schedule; `step_loss()` draws a batch and
    returns its loss. Returns the loss curve."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    loop = TrainingLoop()  # each stage seeds its own generators
    with loop.running(label, steps):
        for _ in range(steps):
            loss = step_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            loop.end_step(loss.item())
    return loop.losses

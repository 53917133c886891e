"""Public pre-training of the embedded tiny LLaVA, cached on disk.

The corpus uses only the *public* digit pool (never the private task's images) plus
text-only items, and teaches the separate skills a small instruction-tuned MLLM would have:
reading a digit from an image (captions, short questions), and text-only number facts and
multiple-choice answering. The private ScienceQA-format task combines them in a format and
with question types the model has not seen together, so fine-tuning has work to do.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import torch

from dpbench.cache import cache_dir
from dpbench.tasks.base import Example
from dpbench.tasks.digits import WORDS, public_digits

CORPUS_VERSION = 1
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDE"


def _image_examples(folder: Path, rng: random.Random, views: int = 3) -> list[Example]:
    out = []
    for d in public_digits():
        for v in range(views):  # the original and shifted copies: a ViT this small overfits otherwise
            view = d if v == 0 else d.shifted(rng.choice((-1, 0, 1)), rng.choice((-1, 0, 1)))
            path = folder / f"public_{d.index}_{v}.png"
            if not path.exists():
                view.image().save(path)
            w = WORDS[d.label]
            pairs = [
                ("Describe the image.", f"A handwritten digit {w}."),
                ("What is written in the image?", f"The number {d.label}."),
                ("What number is shown?", str(d.label)),
                ("Write the number in the image as a word.", w),
            ]
            for prompt, target in pairs:
                out.append(Example(uid=f"pub-{d.index}-{len(out)}", prompt=prompt, target=target, image=path))
    return out


def _mc(question: str, options: list[str], answer: int) -> tuple[str, str]:
    lines = "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))
    return f"{question}\n{lines}\n{MC_INSTRUCTION}", LETTERS[answer]


def _text_examples(rng: random.Random, n: int) -> list[Example]:
    """Number facts and multiple choice over text only: no image, no private content."""
    out = []
    for i in range(n):
        a = rng.randrange(10)
        kind = rng.randrange(6)
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
            else:
                truth = "even" if a % 2 == 0 else "odd"
                shown = ["even", "odd"] if rng.random() < 0.5 else ["odd", "even"]
                q, opts, a = f"Is {a} even or odd?", shown, truth
            prompt, target = _mc(q, shown, opts.index(a))
        out.append(Example(uid=f"txt-{i}", prompt=prompt, target=target))
    return out


def corpus(folder: Path, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    examples = _image_examples(folder, rng) + _text_examples(rng, 3000)
    rng.shuffle(examples)
    return examples


def tokenizer_corpus(examples: list[Example]) -> list[str]:
    """Text for the BPE merges: the pre-training corpus and the chat template's words."""
    return [f"USER: {e.prompt} ASSISTANT: {e.target}" for e in examples] + [
        "Context: Which digit is shown in the image? Which word names the number in the image?"
    ]


def pretrain(model_wrapper, examples: list[Example], steps: int, batch_size: int, lr: float, seed: int) -> list[float]:
    from dpbench.progress import progress

    torch.manual_seed(seed)
    model = model_wrapper.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    losses = []
    with progress() as bar:
        task = bar.add_task("pre-training tiny-llava (public data)", total=steps)
        for step in range(steps):
            batch_ex = rng.sample(examples, batch_size)
            # image and text-only examples go in separate forwards: LLaVA wants a pixel tensor
            # for every image placeholder in the batch
            loss = 0.0
            for part in ([e for e in batch_ex if e.image], [e for e in batch_ex if not e.image]):
                if part:
                    batch = model_wrapper.encode(part, [e.target + "</s>" for e in part])
                    loss = loss + model_wrapper.per_example_loss(batch).sum() / batch_size
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.update(task, advance=1, description=f"pre-training tiny-llava (public data) loss {loss:.3f}")
    model.eval()
    return losses

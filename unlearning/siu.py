"""Single Image Unlearning (Li et al., NeurIPS 2024), adapted to each task's format.

SIU fine-tunes on four targets built from the forget images, with a Dual Masked KL to the
frozen original model:
  1. a new identity: the forget prompts answered with a fixed wrong answer (multiple choice:
     another option, the same one at every step; generation: the concept's name replaced by
     `alias`, or another retained example's answer for an examples request);
  2. a new visual description of the forget image that names the alias (concept requests);
  3. decoupled factual knowledge: text-only questions about the concept's name, answered truly,
     so forgetting what the image shows does not erase what the name means (digits on the
     embedded samples; skipped, and said so, where no such facts exist);
  4. preserved non-target knowledge: retained examples with their own answers.
The loss is their cross-entropy plus `kl_weight` · KL(original ‖ model) over the target positions,
with SIU's two masks: the positions of a changed target are dropped (token mask), and the
concept's own tokens are dropped from both distributions (vocabulary mask).
"""

from __future__ import annotations

import hashlib

import torch

from dpbench.examples import Example
from dpbench.tasks.digits import WORDS
from dpbench.tasks.scienceqa import build_prompt
from dpbench.unlearning.base import UNLEARNERS, Unlearner, descend
from dpbench.unlearning.losses import masked_kl, nll

DESCRIBE = "Describe the image in one sentence."


def wrong_answer(example: Example, retain: list[Example]) -> str:
    """A fixed wrong answer: another option of a multiple-choice example (by a hash of its id,
    so every step teaches the same one); for generation, another retained example's answer."""
    h = int(hashlib.sha256(example.uid.encode()).hexdigest(), 16)
    if example.choices:
        others = [c for i, c in enumerate(example.choices) if i != example.answer]
        return others[h % len(others)]
    others = [e.target for e in retain if e.target != example.target]
    return others[h % len(others)] if others else "something else"


def renamed(example: Example, names: tuple[str, ...], alias: str, retain: list[Example]) -> str:
    if example.choices or not names:
        return wrong_answer(example, retain)
    text = example.target
    for name in names:
        text = text.replace(name, alias)
    return text if text != example.target else wrong_answer(example, retain)


def digit_facts(names: tuple[str, ...]) -> list[Example]:
    """Text-only multiple-choice facts about a digit's name (what SIU calls decoupled knowledge)."""
    digits = [int(n) for n in names if n.isdigit()]
    if not digits:
        return []
    d = digits[0]
    out = []
    for k, (question, choices, answer) in enumerate(
        [
            (f"Which word names the number {d}?", [WORDS[d], WORDS[(d + 3) % 10]], 0),
            (f"Is the number {d} even or odd?", ["even", "odd"], d % 2),
            (f"Which number is written {WORDS[d]}?", [str((d + 5) % 10), str(d)], 1),
        ]
    ):
        letters = tuple(chr(ord("A") + i) for i in range(len(choices)))
        out.append(
            Example(f"siu-fact-{d}-{k}", build_prompt("", question, choices), letters[answer], None, letters, answer)
        )
    return out


def concept_token_ids(tokenizer, names: tuple[str, ...]) -> list[int]:
    """The vocabulary mask: every token of the concept's names, as words and word-initial pieces."""
    ids: set[int] = set()
    for name in names:
        for form in {name, name.capitalize(), f" {name}", f" {name.capitalize()}"}:
            ids.update(tokenizer(form, add_special_tokens=False)["input_ids"])
    return sorted(ids)


@UNLEARNERS.register("siu")
class SIU(Unlearner):
    """SIU's four multifaceted targets + Dual Masked KL to the original model."""

    options = {"kl_weight": 1.0, "alias": "an unfamiliar symbol"}
    needs_original = True

    def unlearn(self, ctx):
        m, o, fs = ctx.model, ctx.original, ctx.forget_set
        alias, kl_weight = self.opts["alias"], self.opts["kl_weight"]
        names = fs.concept_names
        facts = digit_facts(names)
        vocab = concept_token_ids(m.tokenizer, names) if names else []
        ctx.details.update(
            targets={
                "identity": "a fixed wrong answer per forget example",
                "description": f"'The image shows {alias}.'" if names else None,
                "facts": len(facts),
                "preserved": "retained examples, own answers",
            },
            vocabulary_mask_tokens=len(vocab),
        )

        new_identity = {e.uid: renamed(e, names, alias, fs.retain) for e in fs.forget}  # fixed: once, not per step

        def loss(forget, retain):
            examples = list(forget)
            targets = [new_identity[e.uid] for e in forget]
            changed = [True] * len(forget)
            if names:  # a description of the forget image under its new identity
                examples += [Example(f"{e.uid}#describe", DESCRIBE, "", e.image) for e in forget]
                targets += [f"The image shows {alias}."] * len(forget)
                changed += [True] * len(forget)
            examples += facts + list(retain)
            targets += [e.target for e in facts] + [e.target for e in retain]
            changed += [False] * (len(facts) + len(retain))
            ce = nll(m, examples, targets).mean()
            batch_mask = torch.tensor([not c for c in changed], device=m.device).unsqueeze(-1)
            kl = masked_kl(m, o, examples, targets, token_mask=batch_mask, vocab_mask=vocab)
            return ce + kl_weight * kl

        return descend(ctx, loss, self.name)

"""Forget requests: which of a finished run's training examples must be forgotten.

    examples:K      K of the parent's training members, drawn with the unlearning seed
    examples:P%     P percent of them (at least one)
    concept:NAME    every training example of one visual concept. On the embedded samples a
                    concept is a digit (`concept:3` or `concept:three`); on real data it is a
                    field of the examples' metadata (`concept:topic=biology`).

A concept request also names a generality set (unseen test images of the concept) and the
neighbour concepts (the test split's other examples). The yardstick differs: forgetting
examples is judged against `retrain` (the parent's recipe without them), while a concept the
base model already knows (the embedded model reads digits zero-shot, as LLaVA knows a
celebrity) survives retraining, so its efficacy is absolute, as in SIU.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from dpbench.errors import DpbenchError
from dpbench.examples import Example
from dpbench.tasks.digits import WORDS, label_of

KINDS = ("examples", "concept")
YARDSTICKS = {"examples": "retrain", "concept": "absolute"}
_COCO_NAME = re.compile(r"COCO_[a-z]+2014_(\d{12})\.\w+$")
_SKLEARN = re.compile(r"sklearn-digits/(\d+)$")


@dataclass(frozen=True)
class ForgetRequest:
    kind: str  # "examples" or "concept"
    count: int | None = None  # examples:K
    percent: float | None = None  # examples:P%
    concept: str | None = None  # concept:NAME (a digit) or concept:FIELD=VALUE

    @classmethod
    def parse(cls, text: str) -> ForgetRequest:
        usage = "a forget request is examples:K, examples:P% or concept:NAME (e.g. examples:1%, concept:3)"
        kind, sep, value = str(text).partition(":")
        if not sep or kind not in KINDS or not value.strip():
            raise DpbenchError(f"bad forget request {text!r}: {usage}")
        value = value.strip()
        if kind == "concept":
            return cls("concept", concept=value)
        try:
            if value.endswith("%"):
                percent = float(value[:-1])
                if not (math.isfinite(percent) and 0 < percent <= 100):
                    raise ValueError
                return cls("examples", percent=percent)
            count = int(value)
            if count < 1:
                raise ValueError
            return cls("examples", count=count)
        except ValueError:
            raise DpbenchError(
                f"bad forget request {text!r}: K must be a whole number ≥ 1, P a percentage in (0, 100]"
            ) from None

    def __str__(self) -> str:
        if self.kind == "concept":
            return f"concept:{self.concept}"
        return f"examples:{self.percent:g}%" if self.percent is not None else f"examples:{self.count}"

    @property
    def yardstick(self) -> str:
        return YARDSTICKS[self.kind]


@dataclass
class ForgetSet:
    request: ForgetRequest
    forget: list[Example]  # the parent's training examples to forget
    retain: list[Example]  # the rest of the parent's training set
    generality: list[Example]  # unseen examples of the concept (concept requests)
    neighbours: list[Example]  # unseen examples of the other concepts (concept requests)
    concept_names: tuple[str, ...] = ()  # the concept's names, for the generation check and SIU's masks


def digit_of(example: Example) -> int | None:
    """The digit an embedded example shows: the ScienceQA sample records its source image, the
    VQAv2 and COCO samples name the image by it (COCO's file names, id = row + 1)."""
    source = example.meta.get("source_image")
    m = _SKLEARN.match(source) if isinstance(source, str) else None
    if m:
        return label_of(int(m.group(1)))
    m = _COCO_NAME.search(str(example.image)) if example.image is not None else None
    return label_of(int(m.group(1)) - 1) if m else None


def concept_matcher(concept: str, embedded: bool):
    """(a predicate over examples, the concept's names)."""
    if embedded:
        names = {str(d): d for d in range(10)} | {w: d for d, w in enumerate(WORDS)}
        digit = names.get(concept.lower())
        if digit is None:
            raise DpbenchError(f"concept {concept!r}: on the embedded samples a concept is a digit, 0-9 or zero-nine")
        return (lambda e: digit_of(e) == digit), (str(digit), WORDS[digit])
    field, sep, value = concept.partition("=")
    if not sep or not field or not value:
        raise DpbenchError(
            f"concept {concept!r}: on real data name a metadata field and its value, concept:FIELD=VALUE "
            "(e.g. concept:topic=biology)"
        )
    return (lambda e: str(e.meta.get(field)) == value), (value,)


def select(request: ForgetRequest, train: list[Example], test: list[Example], seed: int, embedded: bool) -> ForgetSet:
    """The forget set among `train` (the parent's training examples) and the sets the metrics read;
    a request that selects nothing, or everything, is refused."""
    if request.kind == "examples":
        n = request.count if request.count is not None else max(1, round(request.percent / 100 * len(train)))
        if n >= len(train):
            raise DpbenchError(
                f"{request} asks for {n} of the parent's {len(train)} training examples: leave some to retain"
            )
        chosen = set(random.Random(seed).sample(range(len(train)), n))
        forget = [e for i, e in enumerate(train) if i in chosen]
        retain = [e for i, e in enumerate(train) if i not in chosen]
        return ForgetSet(request, forget, retain, [], [])
    matches, names = concept_matcher(request.concept, embedded)
    forget = [e for e in train if matches(e)]
    if not forget:
        raise DpbenchError(f"{request} selects none of the parent's {len(train)} training examples")
    if len(forget) == len(train):
        raise DpbenchError(f"{request} selects every training example of the parent: nothing would be retained")
    retain = [e for e in train if not matches(e)]
    generality = [e for e in test if matches(e)]
    neighbours = [e for e in test if not matches(e)]
    return ForgetSet(request, forget, retain, generality, neighbours, names)

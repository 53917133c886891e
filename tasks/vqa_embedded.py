"""Build the embedded VQAv2-format sample from scikit-learn's digit images (private pool only).

Written in VQAv2's own layout (questions + annotations json, `{split}2014/COCO_..._{id:012d}.png`)
and read back by the same loader as the real dataset. It is *not* VQAv2: results built on it
say `dataset.source = "embedded-sample"`.

Each private image (image_id = its scikit-learn row + 1) gets three questions of five types
(which digit, plus one, even?, greater than k?, odd or even) with short answers, and ten
simulated annotators per question. Annotators disagree as people do: each misreads a sloppy
digit now and then (and answers consistently with the digit they saw), writes a number as a
word ("seven"), or gives an off answer ("not sure"). Half the images go to train2014, half to
val2014; the loader halves val2014 into non-members and test, all image-disjoint.

Pre-training saw none of these images, nor this prompt format or the yes/no and "plus one"
questions (it answers "even"/"odd" and numbers), so fine-tuning has something to learn.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from dpbench.files import write_json_atomic
from dpbench.tasks.digits import WORDS, Digit
from dpbench.tasks.embedded import build_sample, save_coco_images, train_and_val

FORMAT_VERSION = 1
QUESTIONS_PER_IMAGE = 3
TRAIN_FRACTION = 0.5
ANNOTATORS = 10
# digits a hurried reader takes for one another (both directions)
CONFUSABLE = {
    0: (6, 8),
    1: (7, 4),
    2: (7, 3),
    3: (8, 5),
    4: (9, 1),
    5: (6, 3),
    6: (5, 0),
    7: (1, 2),
    8: (3, 9),
    9: (4, 8),
}
OFF_ANSWERS = ("not sure", "unknown", "number", "digit")


def _number(n: int, rng: random.Random) -> str:
    return WORDS[n] if n < 10 and rng.random() < 0.12 else str(n)


def _yes_no(truth: bool) -> str:
    return "yes" if truth else "no"


def _which_digit(rng: random.Random) -> dict:
    return dict(
        question=rng.choice(["What digit is this?", "What number is this?", "Which digit is written here?"]),
        answer=_number,
        answer_type="number",
        question_type="what number is",
    )


def _plus_one(rng: random.Random) -> dict:
    return dict(
        question="What is this number plus one?",
        answer=lambda n, r: _number(n + 1, r),
        answer_type="number",
        question_type="what is the",
    )


def _is_even(rng: random.Random) -> dict:
    return dict(
        question="Is this number even?",
        answer=lambda n, r: _yes_no(n % 2 == 0),
        answer_type="yes/no",
        question_type="is this",
    )


def _greater(rng: random.Random) -> dict:
    k = rng.randint(1, 8)
    return dict(
        question=f"Is this number greater than {k}?",
        answer=lambda n, r: _yes_no(n > k),
        answer_type="yes/no",
        question_type="is this",
    )


def _odd_or_even(rng: random.Random) -> dict:
    def answer(n: int, r: random.Random) -> str:
        word = "even" if n % 2 == 0 else "odd"
        return f"{word} number" if r.random() < 0.1 else word

    return dict(question="Is this number odd or even?", answer=answer, answer_type="other", question_type="is this")


QUESTION_TYPES = (_which_digit, _plus_one, _is_even, _greater, _odd_or_even)


def _annotate(d: Digit, answer, legibility: float, rng: random.Random) -> list[dict]:
    """Ten annotators' answers; each reads the digit right with probability `legibility`."""
    out = []
    for i in range(ANNOTATORS):
        if rng.random() < 0.03:
            text, confidence = rng.choice(OFF_ANSWERS), "no"
        else:
            seen = d.label if rng.random() < legibility else rng.choice(CONFUSABLE[d.label])
            text, confidence = answer(seen, rng), "yes" if seen == d.label else "maybe"
        out.append({"answer": text, "answer_confidence": confidence, "answer_id": i + 1})
    return out


def _write_split(root: Path, split: str, digits: list[Digit], rng: random.Random) -> int:
    questions, annotations = [], []
    for d, image_id, _, _ in save_coco_images(root, split, digits):
        legibility = 0.95 if rng.random() < 0.8 else 0.6  # a sloppy hand now and then
        for k, make in enumerate(rng.sample(QUESTION_TYPES, QUESTIONS_PER_IMAGE)):
            q = make(rng)
            qid = image_id * 1000 + k
            answers = _annotate(d, q["answer"], legibility, rng)
            questions.append({"image_id": image_id, "question": q["question"], "question_id": qid})
            annotations.append(
                {
                    "question_id": qid,
                    "image_id": image_id,
                    "question_type": q["question_type"],
                    "answer_type": q["answer_type"],
                    "answers": answers,
                    # as in VQAv2: the most frequent of the ten answers
                    "multiple_choice_answer": Counter(a["answer"] for a in answers).most_common(1)[0][0],
                }
            )
    info = {
        "description": "dpbench embedded sample in VQAv2's layout: scikit-learn digit images, simulated "
        "annotators. NOT VQAv2.",
        "version": FORMAT_VERSION,
    }
    common = {
        "info": info,
        "license": {"name": "BSD-3-Clause (scikit-learn digits)"},
        "data_type": "mscoco",
        "data_subtype": f"{split}2014",
    }
    write_json_atomic(
        root / f"v2_OpenEnded_mscoco_{split}2014_questions.json",
        {**common, "task_type": "Open-Ended", "questions": questions},
    )
    write_json_atomic(root / f"v2_mscoco_{split}2014_annotations.json", {**common, "annotations": annotations})
    return len(questions)


def build(root: Path, seed: int = 0) -> Path:
    """Write the sample under `root` (idempotent: a finished build is marked by its version)."""
    return build_sample(root, FORMAT_VERSION, train_and_val(_write_split, TRAIN_FRACTION), seed=seed, count="n")

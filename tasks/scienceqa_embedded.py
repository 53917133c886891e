"""Build the embedded ScienceQA-format sample from scikit-learn's digit images.

It is written in ScienceQA's own layout (`problems.json`, `pid_splits.json`,
`images/<split>/<pid>/image.png`) and read back by the same loader as the real dataset.
It is *not* ScienceQA: results built on it say `dataset.source = "embedded-sample"`.

Each private image yields three problems of different types; all land in the same split, so
members, non-members and test never share an image.
"""

from __future__ import annotations

import random
from pathlib import Path

from dpbench.files import write_json_atomic
from dpbench.tasks.digits import WORDS, Digit
from dpbench.tasks.embedded import build_sample

PROBLEMS_PER_IMAGE = 3
SPLIT_FRACTIONS = (("train", 0.4), ("val", 0.4), ("test", 0.2))
FORMAT_VERSION = 2
HINTS = (
    "",
    "The image shows a handwritten digit scanned from a form.",
    "Handwritten digits can be hard to read; look at the overall shape.",
)


def _digit_choices(d: Digit, rng: random.Random, fewest: int) -> list[int]:
    """The digit and `fewest` to 5 - 1 other digits, shuffled."""
    n = rng.randint(fewest, 5)
    choices = [d.label] + rng.sample([k for k in range(10) if k != d.label], n - 1)
    rng.shuffle(choices)
    return choices


def _which_digit(d: Digit, rng: random.Random) -> dict:
    choices = _digit_choices(d, rng, 2)
    return dict(
        question="Which digit is shown in the image?",
        choices=[str(c) for c in choices],
        answer=choices.index(d.label),
        topic="reading",
        skill="Identify handwritten digits",
        solution=f"The image shows the digit {d.label}.",
    )


def _digit_word(d: Digit, rng: random.Random) -> dict:
    choices = _digit_choices(d, rng, 3)
    return dict(
        question="Which word names the number in the image?",
        choices=[WORDS[c] for c in choices],
        answer=choices.index(d.label),
        topic="vocabulary",
        skill="Match numbers and number words",
        solution=f"The number in the image is {d.label}, which is written {WORDS[d.label]}.",
    )


def _parity(d: Digit, rng: random.Random) -> dict:
    choices = ["even", "odd"] if rng.random() < 0.5 else ["odd", "even"]
    truth = "even" if d.label % 2 == 0 else "odd"
    return dict(
        question="Is the number in the image even or odd?",
        choices=choices,
        answer=choices.index(truth),
        topic="number sense",
        skill="Identify even and odd numbers",
        solution=f"{d.label} is {truth}.",
    )


def _greater(d: Digit, rng: random.Random) -> dict:
    k = rng.choice([x for x in range(1, 9) if x != d.label])
    choices = ["yes", "no"] if rng.random() < 0.5 else ["no", "yes"]
    truth = "yes" if d.label > k else "no"
    return dict(
        question=f"Is the number in the image greater than {k}?",
        choices=choices,
        answer=choices.index(truth),
        topic="number sense",
        skill="Compare numbers",
        solution=f"{d.label} is {'greater' if d.label > k else 'not greater'} than {k}.",
    )


QUESTION_TYPES = (_which_digit, _digit_word, _parity, _greater)


def _problems_for(d: Digit, rng: random.Random) -> list[dict]:
    problems = []
    for make in rng.sample(QUESTION_TYPES, PROBLEMS_PER_IMAGE):
        p = make(d, rng)
        problems.append(
            dict(
                question=p["question"],
                choices=p["choices"],
                answer=p["answer"],
                hint=rng.choice(HINTS),
                image="image.png",
                task="closed choice",
                grade=rng.choice(["grade1", "grade2"]),
                subject="natural science" if p["topic"] == "number sense" else "language science",
                topic=p["topic"],
                category="Digits",
                skill=p["skill"],
                lecture="",
                solution=p["solution"],
                source_image=f"sklearn-digits/{d.index}",
            )
        )
    return problems


def build(root: Path, seed: int = 0) -> Path:
    """Write the sample under `root` (idempotent: a finished build is marked by its version)."""
    return build_sample(root, FORMAT_VERSION, _write_problems, seed=seed)


def _write_problems(root: Path, digits: list[Digit], rng: random.Random) -> int:
    problems, splits = {}, {name: [] for name, _ in SPLIT_FRACTIONS}
    start = 0
    for split, frac in SPLIT_FRACTIONS:
        end = len(digits) if split == SPLIT_FRACTIONS[-1][0] else start + round(frac * len(digits))
        for d in digits[start:end]:
            image = d.image()
            for p in _problems_for(d, rng):
                pid = str(len(problems) + 1)
                p["split"] = split
                problems[pid] = p
                splits[split].append(pid)
                folder = root / "images" / split / pid
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / "image.png")
        start = end
    for split in list(splits):
        splits[f"mini{split}"] = splits[split][: max(1, len(splits[split]) // 4)]
    write_json_atomic(root / "problems.json", problems)
    write_json_atomic(root / "pid_splits.json", splits)
    return len(problems)

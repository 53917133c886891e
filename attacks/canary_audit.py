"""The one-run canary audit around a training run (Steinke, Nasr & Jagielski 2023).

`m` canaries are each added to the training set independently with probability ½ (seeded).
After training, each canary is scored and the most and least member-like are guessed "in" /
"out"; `one_run_bounds.one_run_epsilon_lower_bound` turns the right guesses into an ε lower bound.
This changes what the method trains on, so it is opt-in (`audit.canaries`) and the result
says utility came from a canary-trained run.

Two kinds. `memorable` (default): an image of random noise whose target is a token no training
target uses, each canary its own (Panda et al. 2025's new-token canaries, inside the
vocabulary): only training on that canary raises that token's likelihood. `mislabelled`: a
training example with a wrong answer (ML Privacy Meter's); on the embedded default even a
non-private model gave it nothing to see (README, "Audits").
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from dpbench.attacks.metrics import CONFIDENCE
from dpbench.attacks.one_run_bounds import count_correct, guess_from_scores, one_run_epsilon_lower_bound
from dpbench.attacks.signals import per_example_losses
from dpbench.cache import cache_dir
from dpbench.errors import DpbenchError
from dpbench.examples import Example
from dpbench.files import write_npz
from dpbench.run_folder import RunFolder
from dpbench.spec import CANARY_KINDS

# Fractions of the canaries guessed (half "in", half "out"). The best is reported, so each
# is tested at (1 − confidence) / (number of distinct guess counts) (Bonferroni): the
# maximum stays a sound bound.
GUESS_FRACTIONS = (0.05, 0.1, 0.2, 0.5, 1.0)


def guess_pairs(m: int, fraction_in: float = 0.5) -> list[tuple[int, int]]:
    """(guessed "in", guessed "out") for each of GUESS_FRACTIONS of `m` canaries, split as
    `fraction_in`. The split must come from the scores alone (never from which canaries were
    included) for the bound to stay sound; ½ is inclusion's own probability."""
    if not 0.0 <= fraction_in <= 1.0:
        raise ValueError(f"fraction_in must be in [0, 1], got {fraction_in}")
    pairs = set()
    for f in GUESS_FRACTIONS:
        r = 2 * max(1, int(f * m / 2))
        k = round(r * fraction_in)
        pairs.add((k, r - k))
    return sorted(pairs)


SCORE = "base-model loss minus target-model loss on the canary's target"

UTILITY_NOTE = (
    "utility was measured on a model trained with the black-box one-run audit's canaries in its training "
    "set (each with probability 1/2; audit.canary_kind says which kind)"
)


@dataclass(frozen=True)
class Canaries:
    examples: tuple[Example, ...]
    included: np.ndarray  # bool (m,): which canaries the training set holds
    seed: int

    def included_examples(self) -> list[Example]:
        return [e for e, keep in zip(self.examples, self.included) if keep]


def mislabel(example: Example, others: list[Example], rng: random.Random, index: int) -> Example:
    """A copy of `example` whose target is a wrong answer: another option for multiple
    choice, else another training example's (different) target."""
    if example.choices and example.answer is not None and len(example.choices) > 1:
        wrong = rng.choice([i for i in range(len(example.choices)) if i != example.answer])
        target, answer = example.choices[wrong], wrong
    else:  # a few random draws, not a scan: captioning sets are large and mostly distinct
        target = next((t for t in (rng.choice(others).target for _ in range(100)) if t != example.target), None)
        if target is None:
            raise DpbenchError("canaries need training examples with distinct targets")
        answer = None
    return replace(example, uid=f"canary-{index}-{example.uid}", target=target, answer=answer, references=())


NOISE_SIDE = 32  # px; the processor resizes it as any image
# One token per target: the embedded tokenizer has ~220 tokens no training target uses, and on the
# non-private model 200 one-token canaries audit more strongly than 100 two-token ones (README).
TOKENS_PER_TARGET = 1


def rare_token_targets(tokenizer, train: list[Example], m: int, rng: random.Random) -> list[str]:
    """`m` texts of TOKENS_PER_TARGET tokens each, no token shared between texts and none that any
    training target uses: only a canary's own gradient ever raises its tokens' likelihood (the
    new-token canaries of Panda et al. 2025, within an existing vocabulary)."""
    used = {i for e in train for i in tokenizer(e.target, add_special_tokens=False)["input_ids"]}
    special = set(tokenizer.all_special_ids)
    free = [i for i in range(len(tokenizer)) if i not in used and i not in special]
    rng.shuffle(free)
    targets = []
    for k in range(0, len(free) - TOKENS_PER_TARGET + 1, TOKENS_PER_TARGET):
        ids = free[k : k + TOKENS_PER_TARGET]
        text = tokenizer.decode(ids)
        if text.strip() and tokenizer(text, add_special_tokens=False)["input_ids"] == ids:
            targets.append(text)
        if len(targets) == m:
            return targets
    raise DpbenchError(
        f"{m} memorable canaries need {m * TOKENS_PER_TARGET} tokens no training target uses; this tokenizer "
        f"has enough for {len(targets)}: ask for fewer (--canaries {len(targets)}) or --canary-kind mislabelled"
    )


def memorable(example: Example, target: str, rng: random.Random, index: int, folder: Path) -> Example:
    """A canary only memorisation can predict: an image of uniform random noise and a target of
    tokens no training example's answer contains, asked with a training example's question."""
    noise = rng.randbytes(NOISE_SIDE * NOISE_SIDE * 3)
    # named by content: the same index holds other pixels under another m or seed
    path = folder / f"{hashlib.sha256(noise).hexdigest()[:20]}.png"
    if not path.exists():  # written whole then renamed: runs in parallel share the folder
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        pixels = np.frombuffer(noise, dtype=np.uint8).reshape(NOISE_SIDE, NOISE_SIDE, 3)
        Image.fromarray(pixels).save(tmp, format="PNG")
        os.replace(tmp, path)
    return replace(
        example,
        uid=f"canary-{index}",
        image=path,
        target=target,
        choices=(),
        answer=None,
        references=(),
        group=f"canary-{index}",
    )


def make_canaries(train: list[Example], m: int, seed: int, kind: str = "memorable", tokenizer=None) -> Canaries:
    """`m` canaries built on distinct training examples; inclusion ~ Bernoulli(½), i.i.d., from
    its own seeded stream (so it does not depend on how the canaries were built)."""
    if kind not in CANARY_KINDS:
        raise DpbenchError(f"audit.canary_kind must be one of {', '.join(CANARY_KINDS)}, got {kind!r}")
    if m > len(train):
        raise DpbenchError(f"audit.canaries = {m} exceeds the {len(train)} training examples")
    rng = random.Random(f"canaries-{seed}")
    bases = rng.sample(range(len(train)), m)
    if kind == "mislabelled":
        examples = tuple(mislabel(train[b], train, rng, i) for i, b in enumerate(bases))
    else:
        folder = cache_dir() / "canary-images-v3"
        folder.mkdir(parents=True, exist_ok=True)
        targets = rare_token_targets(tokenizer, train, m, rng)
        examples = tuple(memorable(train[b], t, rng, i, folder) for i, (b, t) in enumerate(zip(bases, targets)))
    coin = random.Random(f"canary-inclusion-{seed}")
    included = np.array([coin.random() < 0.5 for _ in range(m)], dtype=bool)
    return Canaries(examples, included, seed)


def score_canaries(canaries: Canaries, target, base) -> np.ndarray:
    """Higher = more likely included. The base model's loss cancels how unlikely each wrong
    answer already was before fine-tuning (the `reference` attack's calibration)."""
    examples = list(canaries.examples)
    return per_example_losses(base, examples) - per_example_losses(target, examples)


def one_run_audit(scores, included, delta: float, confidence: float = CONFIDENCE) -> dict:
    """Guess the top and bottom scored canaries, abstain on the rest; the best ε̂ over
    GUESS_FRACTIONS (each at a Bonferroni-corrected confidence)."""
    scores = np.asarray(scores, dtype=float)
    m = scores.size
    if m < 2:
        raise ValueError(f"the one-run audit needs at least 2 canaries, got {m}")
    pairs = guess_pairs(m)
    level = 1.0 - (1.0 - confidence) / len(pairs)
    best = {"epsilon_lower_bound": 0.0, "guesses": 0, "correct": 0}
    for k_in, k_out in pairs:
        r, v = count_correct(guess_from_scores(scores, k_in, k_out), included)
        eps = one_run_epsilon_lower_bound(m, r, v, delta, level)
        if eps > best["epsilon_lower_bound"] or best["guesses"] == 0:
            best = {"epsilon_lower_bound": eps, "guesses": r, "correct": v}
    return {
        "m": int(m),
        "included": int(np.sum(included)),
        **best,
        "confidence": confidence,
        "guess_fractions": list(GUESS_FRACTIONS),
        "score": SCORE,
    }


def canary_section(included, scores, seed: int, delta: float) -> dict:
    """The result's `audit.canary`."""
    return {**one_run_audit(scores, included, delta), "seed": seed, "note": UTILITY_NOTE}


def save_canary_scores(folder: RunFolder, canaries: Canaries, scores: np.ndarray) -> None:
    write_npz(
        folder.canary_scores,
        uids=np.array([e.uid for e in canaries.examples]),
        included=canaries.included,
        scores=scores,
    )


def load_canary_scores(folder: RunFolder) -> tuple[np.ndarray, np.ndarray]:
    """(included, scores) as saved by the run."""
    if not folder.canary_scores.exists():
        raise DpbenchError(f"{folder.path} has no saved canary scores ({folder.canary_scores.name})")
    data = np.load(folder.canary_scores)
    return data["included"], data["scores"]

"""What an unlearning run is measured by, offline (no LLM judge), after MMUBench / SIU:

efficacy      the forget set's answers are no longer produced: 1 - accuracy for multiple choice;
              for generation with a concept, the share of answers that no longer name it
generality    the same on unseen test images of the concept (concept requests)
specificity   utility kept: the task's primary metric on the test split and on the neighbour
              concepts, each relative to the parent's
fluency       perplexity, under the unlearned model, of the parent's own answers on retained data
diversity     distinct words / words over greedy generations on the forget prompts
distance      how far the forget set's per-example losses sit from the retrained model's: the
              two-sample Kolmogorov-Smirnov statistic and its p-value (TOFU's forget quality),
              against a retrained model scored in the same invocation
"""

from __future__ import annotations

import random
import re
from typing import Sequence

import numpy as np
import torch

from dpbench.attacks.signals import per_example_losses
from dpbench.examples import Example
from dpbench.models.base import VisionLanguageModel
from dpbench.tasks.base import Task
from dpbench.training_loop import chunks

GENERATION_TOKENS = 16
FLUENCY_EXAMPLES = 200  # retained examples the perplexity reads (seeded sample)
CHUNK = 32


def primary(task: Task, model: VisionLanguageModel, examples: Sequence[Example]) -> float | None:
    return float(task.evaluate(model, list(examples))[task.primary_metric]) if examples else None


def multiple_choice(examples: Sequence[Example]) -> bool:
    return bool(examples) and all(e.choices for e in examples)


def names_concept(text: str, names: Sequence[str]) -> bool:
    return any(re.search(rf"\b{re.escape(n)}\b", text, re.IGNORECASE) for n in names)


def efficacy(
    task: Task,
    model: VisionLanguageModel,
    examples: Sequence[Example],
    names: Sequence[str],
    scored: float | None = None,
) -> float | None:
    """See the module's docstring; None where neither rule applies (a generation task's examples
    request: its distance to retrain is the measure). `scored`: the examples' primary metric where
    the caller has it already (multiple choice does not score them again)."""
    if not examples:
        return None
    if multiple_choice(examples):
        return 1.0 - (primary(task, model, examples) if scored is None else scored)
    if names:
        answers = generations(model, examples)
        return float(np.mean([not names_concept(a, names) for a in answers]))
    return None


@torch.no_grad()
def generations(model: VisionLanguageModel, examples: Sequence[Example]) -> list[str]:
    out: list[str] = []
    for part in chunks(list(examples), CHUNK):
        out += model.generate(part, GENERATION_TOKENS)
    return out


def diversity(texts: Sequence[str]) -> float | None:
    words = [w for t in texts for w in t.lower().split()]
    return len(set(words)) / len(words) if words else None


def example_losses(model: VisionLanguageModel, examples: Sequence[Example], targets: Sequence[str] | None = None):
    """Per-example mean NLL of the targets (the examples' own by default), as a numpy array."""
    return per_example_losses(model, list(examples), CHUNK, targets)


@torch.no_grad()
def parent_answers(parent: VisionLanguageModel, examples: Sequence[Example]) -> list[str]:
    """What the parent itself answers: its most likely option, or its greedy generation."""
    if multiple_choice(examples):
        rows = parent.choice_loglikelihoods(examples)
        return [e.choices[int(np.argmax(r))] for e, r in zip(examples, rows)]
    return generations(parent, examples)


def fluency_sample(retain: Sequence[Example], seed: int) -> list[Example]:
    return random.Random(seed).sample(list(retain), min(FLUENCY_EXAMPLES, len(retain)))


def perplexity(model: VisionLanguageModel, examples: Sequence[Example], answers: Sequence[str]) -> float | None:
    if not examples:
        return None
    return float(np.exp(example_losses(model, examples, answers).mean()))


def ks_distance(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    from scipy.stats import ks_2samp

    test = ks_2samp(a, b)
    return {"ks": float(test.statistic), "p_value": float(test.pvalue)}


def relative(value: float | None, parent: float | None) -> float | None:
    return value / parent if value is not None and parent not in (None, 0) else None

"""The unit of every task and of privacy: one example (a problem, a question, an image to caption)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Example:
    uid: str
    prompt: str  # the user turn's text; the model's chat template adds the image placeholder
    target: str  # the reference continuation a method trains on
    image: Path | None = None
    choices: tuple[str, ...] = ()  # continuations scored for multiple choice (e.g. "A", "B")
    answer: int | None = None  # index into choices
    group: str = ""  # identity of the image: examples sharing it stay in one split
    references: tuple[str, ...] = ()  # extra references for generation metrics
    # generation tasks: the target is a whole answer, so training (and the audit's losses) also
    # score the end-of-sequence token after it; without it a well-trained model never learns
    # to stop and greedy decoding runs on to the token limit
    ends_with_eos: bool = False
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

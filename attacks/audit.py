"""The audit: every chosen attack on members vs non-members -> metrics, ε lower bounds, report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpbench.attacks.base import ATTACKS
from dpbench.attacks.metrics import attack_summary
from dpbench.attacks.signals import Signals

CONFIDENCE = 0.95
SCORES_FILE = "audit_scores.npz"


def score_attacks(attacks, target, reference, members, nonmembers, run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    signals = Signals(target, reference, members + nonmembers, work_dir=run_dir / ".audit")
    n = len(members)
    scores = {}
    for name in attacks:
        s = np.asarray(ATTACKS.get(name)().score(signals), dtype=float)
        scores[name] = (s[:n], s[n:])
    np.savez(run_dir / SCORES_FILE, **{f"{k}/members": v[0] for k, v in scores.items()},
             **{f"{k}/nonmembers": v[1] for k, v in scores.items()})
    return scores


def load_scores(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data = np.load(run_dir / SCORES_FILE)
    names = sorted({k.split("/")[0] for k in data.files})
    return {n: (data[f"{n}/members"], data[f"{n}/nonmembers"]) for n in names}


def summarise(scores: dict[str, tuple[np.ndarray, np.ndarray]], delta: float) -> dict:
    attacks = {}
    for name, (mem, non) in scores.items():
        summary = attack_summary(mem, non, delta, confidence=CONFIDENCE)
        doc = (ATTACKS.get(name).__doc__ or "").split("\n\n")[0]
        attacks[name] = {**summary, "description": " ".join(doc.split())}
    first = next(iter(scores.values()))
    return {
        "n_members": int(len(first[0])),
        "n_nonmembers": int(len(first[1])),
        "confidence": CONFIDENCE,
        "attacks": attacks,
        "canary": None,
        "report": "audit.html",
    }

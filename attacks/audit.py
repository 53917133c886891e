"""The audit: every chosen attack on members vs non-members -> metrics, ε lower bounds, report."""

from __future__ import annotations

import numpy as np

from dpbench.attacks import canary_audit, population
from dpbench.attacks.base import ATTACKS
from dpbench.attacks.metrics import CONFIDENCE, attack_summary
from dpbench.attacks.signals import FORWARD, ReferenceLosses, Signals
from dpbench.files import write_npz
from dpbench.run_folder import RunFolder
from dpbench.run_result import AuditRecord
from dpbench.timing import part


def score_attacks(
    attacks, target, base, members, nonmembers, folder: RunFolder, references: ReferenceLosses | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scores of every attack; attacks that need reference models are left out without them
    (`population.skipped_notes` says so in the result)."""
    shared = any(ATTACKS.get(name).reads_token_stats for name in attacks)
    signals = Signals(
        target,
        base,
        members + nonmembers,
        work_dir=folder.audit_work,
        references=references,
        token_stats_for_loss=shared,
    )
    n = len(members)
    scores = {}
    for name in attacks:
        attack = ATTACKS.get(name)
        if attack.needs_references and references is None:
            continue
        with part(f"attacks.{name}", less=(FORWARD,)):  # its statistics; the forward passes are shared
            s = np.asarray(attack().score(signals), dtype=float)
        scores[name] = (s[:n], s[n:])
    write_npz(
        folder.attack_scores,
        **{f"{k}/members": v[0] for k, v in scores.items()},
        **{f"{k}/nonmembers": v[1] for k, v in scores.items()},
    )
    return scores


def load_scores(folder: RunFolder) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    data = np.load(folder.attack_scores)
    names = sorted({k.split("/")[0] for k in data.files})
    return {n: (data[f"{n}/members"], data[f"{n}/nonmembers"]) for n in names}


def summarise(
    scores: dict[str, tuple[np.ndarray, np.ndarray]],
    delta: float,
    *,
    n_members: int | None = None,
    notes=(),
    references: dict | None = None,
    canary: dict | None = None,
) -> AuditRecord:
    """The result's audit section. `n_members` is needed only when no attack was scored."""
    attacks = {}
    for name, (mem, non) in scores.items():
        summary = attack_summary(mem, non, delta, confidence=CONFIDENCE)
        doc = (ATTACKS.get(name).__doc__ or "").split("\n\n")[0]
        attacks[name] = {**summary, "description": " ".join(doc.split())}
    first = next(iter(scores.values()), None)
    return AuditRecord(
        n_members=int(len(first[0])) if first is not None else int(n_members or 0),
        n_nonmembers=int(len(first[1])) if first is not None else int(n_members or 0),
        confidence=CONFIDENCE,
        attacks=attacks,
        notes=list(notes),
        references=references,
        canary=canary,
        report=RunFolder.report_html.name,
    )


def audit_run(
    spec,
    attacks,
    target,
    base,
    members,
    nonmembers,
    *,
    delta: float,
    folder: RunFolder,
    references: ReferenceLosses | None = None,
    canaries: canary_audit.Canaries | None = None,
):
    """Everything the audit does to a trained model: every attack (those that need reference
    models read `references`, their losses), the canaries. Returns (audit section, attack scores)."""
    scores = score_attacks(attacks, target, base, members, nonmembers, folder, references=references)
    canary = None
    if canaries is not None:
        with part("canaries"):
            canary_scores = canary_audit.score_canaries(canaries, target, base)
        canary_audit.save_canary_scores(folder, canaries, canary_scores)
        canary = canary_audit.canary_section(canaries.included, canary_scores, canaries.seed, delta)
    notes = population.skipped_notes(attacks, spec.audit.references)
    section = summarise(
        scores,
        delta,
        n_members=len(members),
        notes=notes,
        references=references.info if references is not None else None,
        canary=canary,
    )
    return section, scores

"""`dpbench audit RUN_DIR`: audit a finished run again and rewrite its report.

With the run's checkpoint (`dpbench run --save-checkpoint`) the attacks score the examples
again, possibly with other attacks, reusing the reference models' cached losses when they
match; without it, the saved attack and canary scores are summarised again (e.g. after a
change to the audit metrics or report).
"""

from __future__ import annotations

from dataclasses import replace

from dpbench import phases
from dpbench.attacks.audit import load_scores, summarise
from dpbench.attacks.canary_audit import canary_section, load_canary_scores
from dpbench.attacks.population import skipped_notes
from dpbench.attacks.report import write_report
from dpbench.errors import DpbenchError
from dpbench.run_folder import RunFolder
from dpbench.run_result import AuditRecord, RunResult
from dpbench.schemas import load_result, write_result
from dpbench.spec import RunSpec


def rescore(result: RunResult, spec: RunSpec, folder: RunFolder, attacks: list[str] | None):
    """Score the saved model again: the run's own audit, from its checkpoint, through the run's
    phases (its checks, then the base and the checkpoint, each read once)."""
    checked = replace(
        phases.check(spec), delta=result.privacy["delta"] or phases.run_delta(spec, result.dataset.n_train)
    )
    p = phases.load_finished(checked, folder)
    attacks = attacks or list(spec.attacks)
    refs = phases.references(p, result.training.epochs, folder, attacks=attacks)
    return phases.attack(p, refs, folder, attacks)


def resummarise(result: RunResult, spec: RunSpec, folder: RunFolder) -> tuple[AuditRecord, dict]:
    """Summarise the saved attack and canary scores again (no model needed)."""
    delta = result.privacy["delta"] or phases.run_delta(spec, result.dataset.n_train)
    scores = load_scores(folder)
    old = result.audit
    canary = None
    if spec.audit.canaries:
        included, canary_scores = load_canary_scores(folder)
        canary = canary_section(included, canary_scores, spec.training.seed, delta)
    audit = summarise(
        scores,
        delta,
        n_members=old.n_members if old else None,
        notes=skipped_notes(spec.attacks, spec.audit.references),
        references=old.references if old else None,
        canary=canary,
    )
    return audit, scores


def reaudit(run_dir, attacks: list[str] | None = None) -> RunResult:
    folder = RunFolder(run_dir)
    result = RunResult.from_dict(load_result(folder.result, kind="result"))
    spec = RunSpec.from_record(result.spec)
    old_whitebox = result.audit.whitebox if result.audit is not None else None
    if folder.checkpoint.is_dir():
        result.audit, scores = rescore(result, spec, folder, attacks)
    elif folder.attack_scores.exists():
        if attacks:
            raise DpbenchError(f"{folder.path} has no checkpoint: new attacks need `dpbench run --save-checkpoint`")
        result.audit, scores = resummarise(result, spec, folder)
    else:
        raise DpbenchError(f"{folder.path} has neither a checkpoint nor saved attack scores to audit")
    if old_whitebox is not None:  # made during training: a re-audit keeps it as it was
        result.audit.whitebox = old_whitebox
    write_report(folder, result.to_dict(), scores)
    write_result(folder.result, result.to_dict())
    return result

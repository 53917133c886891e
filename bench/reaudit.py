"""`dpbench audit RUN_DIR`: audit a finished run again and rewrite its report.

With the run's checkpoint (`dpbench run --save-checkpoint`) the attacks score the examples
again, possibly with other attacks, reusing the reference models' cached losses
(`audit_references.npz`) when they match; without it, the saved attack and canary scores are
summarised again (e.g. after a change to the audit metrics or report).
"""

from __future__ import annotations

from pathlib import Path

from dpbench.attacks.audit import audit_run, load_scores, summarise
from dpbench.attacks.canary_audit import canary_section, load_canary_scores
from dpbench.attacks.population import skipped_notes
from dpbench.attacks.report import write_report
from dpbench.errors import DpbenchError
from dpbench.results import load_result, write_result
from dpbench.spec import RunSpec


def reaudit(run_dir: Path, attacks: list[str] | None = None) -> dict:
    result = load_result(run_dir / "result.json")
    spec = RunSpec.from_dict(result["spec"])
    delta = result["privacy"]["delta"] or (1.0 / (10 * result["dataset"]["n_train"]))
    checkpoint = run_dir / "checkpoint"
    if checkpoint.is_dir():
        from dpbench.attacks.canary_audit import make_canaries
        from dpbench.methods.base import METHODS
        from dpbench.models.registry import load_hf, load_model
        from dpbench.runner import audit_sets, training_examples
        from dpbench.tasks.base import TASKS

        data = TASKS.get(spec.task)().load(spec.data_dir)
        train = training_examples(spec, data)
        members, nonmembers = audit_sets(spec, train, data)
        canaries = make_canaries(train, spec.audit.canaries, spec.training.seed) if spec.audit.canaries else None
        base = load_model(spec.model, spec.device)
        target = load_hf(checkpoint, spec.device, base.info)
        METHODS.get(spec.method)(**spec.method_options).prepare(target)  # e.g. the same token pruning
        result["audit"], scores = audit_run(spec, attacks or list(spec.attacks), target, base, members, nonmembers,
                                            data.test, delta=delta, target_epochs=result["training"]["epochs"],
                                            run_dir=run_dir, canaries=canaries)
    elif (run_dir / "audit_scores.npz").exists():
        if attacks:
            raise DpbenchError(f"{run_dir} has no checkpoint: new attacks need `dpbench run --save-checkpoint`")
        scores = load_scores(run_dir)
        old = result["audit"] or {}
        canary = None
        if spec.audit.canaries:
            included, canary_scores = load_canary_scores(run_dir)
            canary = canary_section(included, canary_scores, spec.training.seed, delta)
        result["audit"] = summarise(scores, delta, n_members=old.get("n_members"),
                                    notes=skipped_notes(spec.attacks, spec.audit.references),
                                    references=old.get("references"), canary=canary)
    else:
        raise DpbenchError(f"{run_dir} has neither a checkpoint nor saved attack scores to audit")
    write_report(run_dir, result, scores)
    write_result(run_dir / "result.json", result)
    return result

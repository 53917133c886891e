"""`dpbench audit RUN_DIR`: audit a finished run again and rewrite its report.

With the run's checkpoint (`dpbench run --save-checkpoint`) the attacks score the examples
again, possibly with other attacks; without it, the saved attack scores are summarised again
(e.g. after a change to the audit metrics or report).
"""

from __future__ import annotations

from pathlib import Path

from dpbench.attacks.audit import load_scores, score_attacks, summarise
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
        from dpbench.methods.base import METHODS
        from dpbench.models.registry import load_hf, load_model
        from dpbench.runner import audit_sets, training_examples
        from dpbench.tasks.base import TASKS

        data = TASKS.get(spec.task)().load(spec.data_dir)
        members, nonmembers = audit_sets(spec, training_examples(spec, data), data)
        base = load_model(spec.model, spec.device)
        target = load_hf(checkpoint, spec.device, base.info)
        METHODS.get(spec.method)(**spec.method_options).prepare(target)  # e.g. the same token pruning
        scores = score_attacks(attacks or list(spec.attacks), target, base, members, nonmembers, run_dir)
    elif (run_dir / "audit_scores.npz").exists():
        if attacks:
            raise DpbenchError(f"{run_dir} has no checkpoint: new attacks need `dpbench run --save-checkpoint`")
        scores = load_scores(run_dir)
    else:
        raise DpbenchError(f"{run_dir} has neither a checkpoint nor saved attack scores to audit")
    result["audit"] = summarise(scores, delta)
    write_report(run_dir, result, scores)
    write_result(run_dir / "result.json", result)
    return result

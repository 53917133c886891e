"""One run, top to bottom, as `dpbench run` does it: prepare -> train (memory measured) ->
evaluate -> audit -> record. Each phase lives in `dpbench.phases`."""

from __future__ import annotations

import time
from pathlib import Path

from dpbench import phases
from dpbench.attacks.report import write_report
from dpbench.models.registry import load_model
from dpbench.results import write_json_atomic, write_result
from dpbench.run_folder import RunFolder
from dpbench.run_result import RunResult
from dpbench.spec import RunSpec


def run(spec: RunSpec, runs_dir: Path, *, audit: bool = True, save_checkpoint: bool = False, log=print) -> RunResult:
    started = time.perf_counter()
    prepared = phases.prepare(spec)
    folder = RunFolder.of(runs_dir, spec.run_id()).create()
    write_json_atomic(folder.spec, spec.to_dict())
    log(
        f"run {spec.run_id()}: {spec.method} on {spec.task} ({len(prepared.fit)} training examples, "
        f"{prepared.data.source})"
    )

    trained = phases.train(prepared)
    evaluation = phases.evaluate(prepared.task, prepared.model, prepared.scored)
    if save_checkpoint:
        phases.save_checkpoint(prepared, folder)

    base = load_model(spec.model, spec.device)  # the base model: zero-shot utility, the audit's reference
    zero_shot = prepared.task.evaluate(base, prepared.scored)
    audit_record, scores = None, {}
    if audit:
        audit_record, scores = phases.audit(prepared, base, folder, trained.report.epochs, log)
    audit_record = phases.with_whitebox(audit_record, trained)

    result = phases.record(prepared, trained, evaluation, zero_shot, audit_record, time.perf_counter() - started)
    if audit_record is not None:
        write_report(folder, result.to_dict(), scores)
    write_result(folder.result, result.to_dict())  # last: a result file means a finished run
    return result

"""One run, top to bottom: load -> train (memory measured) -> evaluate -> audit -> write.

The training phase is the first heavy work in the process (the embedded model is built in
a process of its own), so its memory high-water mark belongs to the method alone.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from pathlib import Path

from dpbench.errors import DpbenchError
from dpbench.methods.base import METHODS
from dpbench.models.lora import merge_lora, setup_parameters
from dpbench.models.registry import MODELS, load_model
from dpbench.privacy import check_delta, default_delta
from dpbench.results import write_json_atomic, write_result
from dpbench.spec import RunSpec
from dpbench.systems import PeakMemory, environment, throughput
from dpbench.tasks.base import TASKS, Example, TaskData


def check_names(spec: RunSpec) -> None:
    """Fail on unknown names before anything slow happens."""
    TASKS.get(spec.task)
    METHODS.get(spec.method)
    if spec.model not in MODELS and not Path(spec.model).is_dir() and "/" not in spec.model:
        MODELS.get(spec.model)
    if spec.attacks:
        from dpbench.attacks.base import ATTACKS

        for name in spec.attacks:
            ATTACKS.get(name)


def training_examples(spec: RunSpec, data: TaskData) -> list[Example]:
    train = data.train
    if spec.training.n_train is not None:
        if spec.training.n_train > len(train):
            raise DpbenchError(f"n_train = {spec.training.n_train} exceeds the {len(train)} training examples")
        train = random.Random(spec.training.seed).sample(train, spec.training.n_train)
    return train


def run_delta(spec: RunSpec, n_train: int) -> float:
    """The run's δ; a non-private run uses it only for the audit's ε lower bounds."""
    return spec.privacy.delta if spec.privacy.delta is not None else default_delta(n_train)


def audit_sets(spec: RunSpec, train: list[Example], data: TaskData) -> tuple[list[Example], list[Example]]:
    """Equal-size members and non-members (so AUC and the ε bound weigh both alike),
    reproducible from the spec, so a re-audit scores the same examples."""
    n = min(len(train), len(data.nonmembers))
    return random.Random(spec.training.seed + 1).sample(train, n), data.nonmembers[:n]


def run(spec: RunSpec, runs_dir: Path, *, audit: bool = True, save_checkpoint: bool = False, log=print) -> dict:
    started = time.perf_counter()
    check_names(spec)
    task = TASKS.get(spec.task)()
    method = METHODS.get(spec.method)(**spec.method_options)

    data = task.load(spec.data_dir)
    train = training_examples(spec, data)
    canaries, utility_notes = None, []
    if spec.audit.canaries:  # opt-in: the one-run audit changes the training set
        from dpbench.attacks.canary_audit import UTILITY_NOTE, make_canaries

        canaries, utility_notes = make_canaries(train, spec.audit.canaries, spec.training.seed), [UTILITY_NOTE]
    fit = train + canaries.included_examples() if canaries else train  # what the method trains on
    delta = run_delta(spec, len(fit))
    if method.private:
        check_delta(delta, len(fit))
    scored = data.nonmembers if spec.eval_split == "validation" else data.test
    scored = scored[: spec.eval_limit] if spec.eval_limit else scored

    model = load_model(spec.model, spec.device)
    setup_parameters(model, spec)  # LoRA adapters (if any), then the trainable groups
    method.prepare(model)
    run_dir = runs_dir / spec.run_id()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "spec.json", spec.to_dict())
    log(f"run {spec.run_id()}: {spec.method} on {spec.task} ({len(fit)} training examples, {data.source})")

    with PeakMemory(spec.device) as memory:
        t0 = time.perf_counter()
        report = method.train(model, fit, spec, delta)
        train_wall = time.perf_counter() - t0
    total, trainable = model.parameter_counts()  # now: merging the adapters (below) removes them

    tokens_before = model.tokens_encoded
    t0 = time.perf_counter()
    metrics = task.evaluate(model, scored)
    eval_wall = time.perf_counter() - t0
    eval_tokens = model.tokens_encoded - tokens_before
    if save_checkpoint:
        if spec.lora is not None:  # a plain HF checkpoint; the audit below then scores the merged model
            merge_lora(model)
        model.model.save_pretrained(run_dir / "checkpoint")
        model.processor.save_pretrained(run_dir / "checkpoint")

    # the base model, reloaded: zero-shot utility, and the audit's reference model
    base = load_model(spec.model, spec.device)
    zero_shot = task.evaluate(base, scored)

    audit_section, scores = None, {}
    if audit and (spec.attacks or canaries):
        from dpbench.attacks.audit import audit_run

        members, nonmembers = audit_sets(spec, train, data)
        audit_section, scores = audit_run(spec, spec.attacks, model, base, members, nonmembers, data.test,
                                          delta=delta, target_epochs=report.epochs, run_dir=run_dir,
                                          canaries=canaries, log=log)

    result = {
        "schema_version": 1,
        "run_id": spec.run_id(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec": spec.to_dict(),
        "environment": environment(spec.device),
        "dataset": {
            "task": spec.task,
            "source": data.source,
            "path": data.path,
            "layout": data.layout,
            "n_train": len(fit),
            "n_canaries": len(fit) - len(train),
            "n_members": audit_section["n_members"] if audit_section else 0,
            "n_nonmembers": audit_section["n_nonmembers"] if audit_section else 0,
            "n_test": len(scored),
        },
        "model": {
            "name": model.info.name,
            "source": model.info.source,
            "path": model.info.path,
            "architecture": model.info.architecture,
            "parameters_total": total,
            "parameters_trainable": trainable,
            "zero_shot": zero_shot,
        },
        "utility": {
            "split": spec.eval_split,
            "primary_metric": task.primary_metric,
            "higher_is_better": task.higher_is_better,
            "metrics": metrics,
            "unavailable": task.unavailable_metrics(),
            "notes": utility_notes,
        },
        "privacy": report.privacy.to_dict(),
        "training": {
            "steps": report.steps,
            "epochs": report.epochs,
            "final_loss": report.losses[-1] if report.losses else None,
            "loss_curve": [round(x, 5) for x in report.losses],
            "details": report.details,
        },
        "systems": {
            "device": spec.device,
            "peak_memory": memory.records,
            "train": throughput(train_wall, report.samples, report.tokens),
            "eval": throughput(eval_wall, len(scored), eval_tokens),
            "total_wall_s": time.perf_counter() - started,
            "visual_tokens": {"before": model.visual_tokens_per_image, "after": model.visual_tokens_kept},
        },
        "audit": audit_section,
    }
    if audit_section is not None:
        from dpbench.attacks.report import write_report

        write_report(run_dir, result, scores)
    write_result(run_dir / "result.json", result)  # last: a result file means a finished run
    return result

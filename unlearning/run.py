"""`dpbench unlearn RUN_DIR --method NAME --forget REQUEST`, top to bottom: check every input ->
make sure the retrained reference exists -> load the parent -> unlearn (memory and time measured)
-> measure -> record.

An unlearning run has a folder of its own beside the training runs (`runs/unlearn-<method>-<hash>`:
spec.json, result.json); the `retrain` reference keeps its checkpoint, since every
other method on the same parent, request and seed is measured against it.
"""

from __future__ import annotations

import copy
import datetime as dt
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dpbench.errors import DpbenchError
from dpbench.files import write_json_atomic
from dpbench.registry import UNLEARNERS
from dpbench.run_folder import RunFolder, check_runs_dir
from dpbench.schemas import load_result, write_result
from dpbench.spec import RunSpec
from dpbench.unlearning.requests import ForgetRequest, ForgetSet, select
from dpbench.unlearning.spec import UnlearnSpec

SCHEMA_VERSION = 1
REFERENCE = "retrain"


@dataclass
class Checked:
    """Everything `dpbench unlearn` checked before loading a model."""

    spec: UnlearnSpec
    parent_folder: RunFolder
    parent: dict[str, Any]  # the parent's result
    parent_spec: RunSpec
    forget_set: ForgetSet
    parent_fit: list  # what the parent trained on
    task: Any
    scored: list
    nonmembers: list  # held-out examples of the task (the audit's population attack)

    @property
    def delta(self) -> float:
        from dpbench import phases

        return self.parent["privacy"].get("delta") or phases.run_delta(self.parent_spec, len(self.parent_fit))


def make_spec(
    parent_dir: str | Path,
    method: str,
    forget: str,
    options: dict[str, Any] | None = None,
    seed: int = 0,
    **recipe: Any,
) -> UnlearnSpec:
    """The spec from the command's arguments; the method's options and learning rate resolved."""
    unlearner = UNLEARNERS.get(method)(**(options or {}))  # unknown names and bad options fail here
    request = ForgetRequest.parse(forget)
    parent = parent_result(RunFolder(Path(parent_dir)))
    recipe = {k: v for k, v in recipe.items() if v is not None}
    if not unlearner.gradient_recipe:  # one spec, so one run id, whatever recipe the command gave
        recipe = {}
    recipe.setdefault("lr", unlearner.default_lr)
    spec = UnlearnSpec(parent["run_id"], method, str(request), unlearner.opts, seed, **recipe)
    return reference_spec(spec) if method == REFERENCE else spec


def reference_spec(spec: UnlearnSpec) -> UnlearnSpec:
    """The retrain run `spec` is measured against. Retraining follows the parent's recipe and seed,
    so only the forget set matters: for a concept it is the same at every unlearning seed, and
    one retrained model serves them all."""
    seed = spec.seed if ForgetRequest.parse(spec.forget).kind == "examples" else 0
    return UnlearnSpec(spec.parent, REFERENCE, spec.forget, {}, seed, lr=None)


def parent_result(folder: RunFolder) -> dict[str, Any]:
    if not folder.path.is_dir():
        raise DpbenchError(f"{folder.path} is not a run folder")
    if not folder.result.exists():
        raise DpbenchError(f"{folder.path} has no result.json: unlearning starts from a finished `dpbench run`")
    result = load_result(folder.result, kind="result")
    folder.require_checkpoint()
    return result


def check(spec: UnlearnSpec, parent_dir: str | Path) -> Checked:
    """Every input, before any model loads: the parent run, its data and the request's selection."""
    from dpbench import phases
    from dpbench.tasks.base import TASKS

    folder = RunFolder(Path(parent_dir))
    parent = parent_result(folder)
    if parent["run_id"] != spec.parent:
        raise DpbenchError(f"{folder.path} holds run {parent['run_id']}, not the spec's parent {spec.parent}")
    parent_spec = RunSpec.from_record(parent["spec"])
    if parent_spec.training.nproc > 1:
        raise DpbenchError(
            "the parent trained on several processes: `retrain` would not be its recipe; unlearn a one-process run"
        )
    if parent_spec.lora is not None:  # its checkpoint holds merged weights: the adapters are gone
        raise DpbenchError(
            "the parent trained LoRA adapters, which its checkpoint merged away; unlearn a run without --lora"
        )
    if parent_spec.audit.canaries:
        raise DpbenchError(
            "the parent trained with the one-run audit's canaries in its training set; unlearn a run without them "
            "(audit.canaries: 0, the default)"
        )
    UNLEARNERS.get(spec.method)(**spec.options)
    request = ForgetRequest.parse(spec.forget)
    task = TASKS.get(parent_spec.task)()
    data = task.load(parent_spec.data_dir)
    train = phases.training_examples(parent_spec, data)
    scored = data.nonmembers if parent_spec.eval_split == "validation" else data.test
    scored = scored[: parent_spec.eval_limit] if parent_spec.eval_limit else scored
    forget_set = select(request, train, scored, spec.seed, data.source == "embedded-sample")
    return Checked(spec, folder, parent, parent_spec, forget_set, train, task, scored, data.nonmembers)


def unlearn(
    spec: UnlearnSpec, parent_dir: str | Path, runs_dir: str | Path, log=print, checked: Checked | None = None
) -> dict[str, Any]:
    """The unlearning run's result (also written to its folder); a finished one is returned as it is.
    `checked`: the inputs, when the caller has checked them for this parent and request."""
    check_runs_dir(runs_dir)
    folder = RunFolder.of(runs_dir, spec.run_id())
    if folder.finished(spec):
        log(f"unlearning run {spec.run_id()} is finished: {folder.result}")
        return load_result(folder.result)
    checked = replace(checked, spec=spec) if checked is not None else check(spec, parent_dir)
    reference = None
    if spec.method != REFERENCE:  # every method is measured against the retrained model
        ref_spec = reference_spec(spec)  # the same forget set: the request's selection does not depend on it
        ref_folder = RunFolder.of(runs_dir, ref_spec.run_id())
        if not ref_folder.finished(ref_spec):
            log(f"first the gold standard: {REFERENCE} on the same parent, request and seed")
            unlearn(ref_spec, parent_dir, runs_dir, log, checked)
        elif not ref_folder.checkpoint.is_dir():
            raise DpbenchError(f"{ref_folder.path} has lost its checkpoint/: delete that folder, and it is retrained")
        reference = (ref_folder, load_result(ref_folder.result, kind="unlearn"))
    return run_checked(checked, folder.create(), reference, log)


def run_checked(c: Checked, folder: RunFolder, reference: tuple[RunFolder, dict] | None, log) -> dict[str, Any]:
    """`reference`: the retrain run's folder and result (None for retrain itself)."""
    from dpbench import phases
    from dpbench.runner import failure_recorded, holding
    from dpbench.systems import PeakMemory, environment

    spec, ps = c.spec, c.parent_spec
    started = time.perf_counter()
    with holding(folder, spec, False), failure_recorded(folder) as phase:
        write_json_atomic(folder.spec, spec.to_dict())
        fs = c.forget_set
        log(
            f"unlearning run {spec.run_id()}: {spec.method} on {c.parent['run_id']} ({ps.method}), "
            f"{spec.forget}: forget {len(fs.forget)}, retain {len(fs.retain)}"
        )
        unlearner = UNLEARNERS.get(spec.method)(**spec.options)
        parent_method = phases.make_method(ps)
        info = model_info(c.parent)
        model = phases.load_checkpoint(ps, parent_method, c.parent_folder, info)
        model.set_trainable(ps.training.trainable.split(","))
        frozen = copy.deepcopy(model) if unlearner.needs_original else None
        from dpbench.unlearning.base import Context

        ctx = Context(model, frozen, fs, spec, ps, c.parent_fit, c.delta)
        phase("unlearn")
        with PeakMemory(ps.device) as memory:
            t0 = time.perf_counter()
            unlearned = unlearner.unlearn(ctx)
            wall = time.perf_counter() - t0
        if spec.method == REFERENCE:  # what every other method is measured against
            unlearned.model.save_pretrained(folder.checkpoint)
            unlearned.processor.save_pretrained(folder.checkpoint)
        phase("measure")
        if frozen is not None:
            parent_model = frozen
        elif not unlearner.gradient_recipe:  # retrain and noop leave the loaded parent as it was
            parent_model = model
        else:
            parent_model = phases.load_checkpoint(ps, parent_method, c.parent_folder, info)
        retrained = phases.load_checkpoint(ps, parent_method, reference[0], info) if reference else None
        from dpbench.unlearning.measure import measure

        metrics = measure(c, unlearned, parent_model, retrained, reference[1] if reference else None)
        ref_wall = reference[1]["systems"]["wall_s"] if reference else wall
        result = {
            "kind": "dpbench-unlearn",
            "schema_version": SCHEMA_VERSION,
            "run_id": spec.run_id(),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "spec": spec.to_dict(),
            "parent": _parent_record(c),
            "request": {
                "kind": fs.request.kind,
                "yardstick": fs.request.yardstick,
                "n_forget": len(fs.forget),
                "n_retain": len(fs.retain),
                "n_generality": len(fs.generality),
                "n_neighbours": len(fs.neighbours),
                "concept_names": list(fs.concept_names),
            },
            "method": {
                "control": unlearner.control,
                "details": ctx.details,
                "loss_curve": [round(x, 5) for x in ctx.losses],
            },
            "metrics": metrics,
            "systems": {
                "device": ps.device,
                "wall_s": round(wall, 3),
                "peak_memory": memory.records,
                "retrain_wall_s": round(ref_wall, 3),
                "speedup_over_retrain": round(ref_wall / max(wall, 1e-9), 3),
                "total_wall_s": round(time.perf_counter() - started, 3),
            },
            "environment": environment(ps.device),
            "audit": None,
        }
        write_result(folder.result, result)  # last: a result file means a finished run
    log(f"unlearning run {spec.run_id()} written: {folder.result}")
    return result


def model_info(parent: dict[str, Any]):
    """The base model's record of a parent's result, as a loaded checkpoint carries it."""
    from dpbench.models.base import ModelInfo

    m = parent["model"]
    return ModelInfo(m["name"], m["source"], m["path"], m["architecture"], m["weights_sha256"])


def _parent_record(c: Checked) -> dict[str, Any]:
    p = c.parent
    return {
        "run_id": p["run_id"],
        "method": c.parent_spec.method,
        "task": c.parent_spec.task,
        "epsilon": p["privacy"].get("epsilon"),
        "delta": p["privacy"].get("delta"),
        "private": bool(p["privacy"].get("private", c.parent_spec.method != "nonprivate")),
        "n_train": len(c.parent_fit),
        "dataset_source": p["dataset"]["source"],
    }

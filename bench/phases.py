"""The phases of one run: check -> prepare -> train -> evaluate -> zero-shot -> references ->
audit -> record -> write.

`dpbench run` (the runner), its `--nproc` launcher, the benchmark worker, `dpbench audit` and
the audit's reference models all go through these functions, so inputs are checked, a model is
loaded, adapted and measured one way. Each step's inputs are made once and handed down: the
base model is read from disk once per run (in `prepare`) and shared where it is only read
(zero-shot, the attacks' base-model signal); the target and the reference models start from
copies of it. The reference models are trained here and reach the audit as their losses.
The training phase is the first heavy work in the process (the embedded model is built in a
process of its own, the base waits on the CPU), so its memory high-water mark belongs to the
method alone.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, fields

from dpbench.attacks import population
from dpbench.attacks.audit import audit_run
from dpbench.attacks.base import ATTACKS
from dpbench.attacks.canary_audit import UTILITY_NOTE, Canaries, make_canaries
from dpbench.attacks.gradient_canaries import UTILITY_NOTE as WHITEBOX_NOTE
from dpbench.attacks.metrics import CONFIDENCE
from dpbench.attacks.report import write_report
from dpbench.attacks.signals import ReferenceLosses
from dpbench.distributed import world
from dpbench.errors import DpbenchError
from dpbench.examples import Example
from dpbench.files import write_npz
from dpbench.memory_breakdown import MemoryBreakdown
from dpbench.methods.base import METHODS, Method, TrainReport
from dpbench.models.base import VisionLanguageModel
from dpbench.models.loading import check_model_name, check_shape, is_systems_only, load_hf, load_model, load_skeleton
from dpbench.models.lora import merge_lora, setup_parameters
from dpbench.models.random_init import ModelShape
from dpbench.models.token_pruning import install_token_pruning
from dpbench.privacy import check_delta, default_delta
from dpbench.run_folder import RunFolder
from dpbench.run_result import (
    AuditRecord,
    DatasetRecord,
    ModelRecord,
    RunResult,
    SystemsRecord,
    TrainingRecord,
    UtilityRecord,
)
from dpbench.spec import RunSpec
from dpbench.systems import PeakMemory, check_device, environment, throughput
from dpbench.tasks.base import TASKS, Task, TaskData
from dpbench.timing import part


@dataclass
class Checked:
    """Every input of a run, checked; the data read, no weights loaded."""

    spec: RunSpec
    task: Task
    method: Method
    data: TaskData
    train: list[Example]  # the task's training examples this run draws on
    canaries: Canaries | None
    fit: list[Example]  # what the method trains on: `train` and the included canaries
    delta: float
    scored: list[Example]  # where utility is measured

    @property
    def utility_notes(self) -> list[str]:
        notes = [UTILITY_NOTE] if self.canaries is not None else []
        a = self.spec.audit  # canaries off an audit block (on the model, or dpzo's) change training
        changed = a.gradient_canaries and (a.canary_placement == "model" or not self.method.audit_block)
        return notes + ([WHITEBOX_NOTE] if changed else [])


@dataclass
class Prepared(Checked):
    """A checked run with its models: the target (trained in place) and, where the run reads it
    after training, the base model as loaded (never trained)."""

    model: VisionLanguageModel
    base: VisionLanguageModel | None

    @classmethod
    def of(cls, c: Checked, model: VisionLanguageModel, base: VisionLanguageModel | None) -> Prepared:
        """The checked run, every field of it kept, with its models."""
        return cls(**{f.name: getattr(c, f.name) for f in fields(Checked)}, model=model, base=base)


@dataclass
class Trained:
    report: TrainReport
    peak_memory: list[dict]
    wall_s: float
    parameters: tuple[int, int]  # (total, trainable), counted before LoRA adapters are merged
    visual_tokens: dict[str, int]
    memory_breakdown: list[dict] | None = None  # the training device's, per process (memory_breakdown.py)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    wall_s: float
    tokens: int
    examples: int


def resolve_names(spec: RunSpec) -> None:
    """Every registry name of the spec, checked before anything slow."""
    TASKS.get(spec.task)
    METHODS.get(spec.method)
    check_model_name(spec.model)
    check_shape(spec.model, model_shape(spec))
    for name in spec.attacks:
        ATTACKS.get(name)
    check_device(spec.device)


def check_utility_run(spec: RunSpec) -> None:
    """`dpbench run` and sweeps measure utility and privacy: a random-init systems model has neither."""
    if is_systems_only(spec.model):
        raise DpbenchError(
            f"{spec.model} has random weights, for systems figures only: measure its memory and speed with "
            f"`dpbench bench --model {spec.model}`; `dpbench run` needs trained weights"
        )


def model_shape(spec: RunSpec) -> ModelShape:
    return ModelShape(spec.model_layers, spec.model_hidden_size)


def make_method(spec: RunSpec) -> Method:
    return METHODS.get(spec.method)(**spec.method_options)  # bad options fail here


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
    """Equal-size members and non-members (so AUC and the ε bound weigh both alike), at most
    `audit.members` of each, seeded samples reproducible from the spec, so a re-audit scores the
    same examples."""
    n = min(len(train), len(data.nonmembers), spec.audit.members or len(train))
    members = random.Random(spec.training.seed + 1).sample(train, n)
    if spec.audit.members is None or n == len(data.nonmembers):  # the task's first n, as before the cap
        return members, data.nonmembers[:n]
    return members, random.Random(spec.training.seed + 2).sample(data.nonmembers, n)


def run_canaries(spec: RunSpec, train: list[Example], tokenizer) -> Canaries | None:
    """The one-run audit's canaries, when the spec asks for them (they change the training set)."""
    a = spec.audit
    return make_canaries(train, a.canaries, spec.training.seed, a.canary_kind, tokenizer) if a.canaries else None


def adapt(model: VisionLanguageModel, spec: RunSpec, method: Method) -> VisionLanguageModel:
    """The spec's transforms of a loaded model that training and evaluation both see: visual-token
    pruning, then the method's own preparation."""
    if spec.token_pruning.enabled:
        install_token_pruning(model, spec.token_pruning)
    method.prepare(model)
    return model


def load_base(spec: RunSpec, device: str) -> VisionLanguageModel:
    """The spec's model as its checkpoint holds it, on `device`: the one read from disk."""
    return load_model(spec.model, device, model_shape(spec))


def load_target(spec: RunSpec, method: Method, base: VisionLanguageModel | None = None) -> VisionLanguageModel:
    """The base model (a copy of `base`, else read from disk) with the spec's LoRA adapters,
    trainable groups and transforms."""
    model = base.copy(spec.device) if base is not None else load_base(spec, spec.device)
    setup_parameters(model, spec)
    return adapt(model, spec, method)


def load_checkpoint(spec: RunSpec, method: Method, folder: RunFolder, base_info) -> VisionLanguageModel:
    """A finished run's saved model, transformed as the run's was, so scores match the run's."""
    folder.require_checkpoint()
    return adapt(load_hf(folder.checkpoint, spec.device, base_info), spec, method)


def check(spec: RunSpec) -> Checked:
    """Every input of the run, before any weights load or any file of the run is written: names,
    options and device, the data's layout, n_train, the model's parameter groups, the canaries
    against its vocabulary and the gradient canaries against its trainable coordinates (both read
    off its weightless skeleton), δ. The `--nproc` launcher and `dpbench audit` stop here."""
    resolve_names(spec)
    task, method = TASKS.get(spec.task)(), make_method(spec)
    with part("data"):
        data = task.load(spec.data_dir)
    train = training_examples(spec, data)
    skeleton = load_skeleton(spec.model, model_shape(spec))
    setup_parameters(skeleton, spec)
    method.check_model(skeleton)
    trainable = skeleton.parameter_counts()[1]
    if spec.audit.canary_placement == "model" and spec.audit.gradient_canaries > trainable:  # one coordinate each
        raise DpbenchError(
            f"audit.gradient_canaries = {spec.audit.gradient_canaries} exceeds the model's {trainable} trainable "
            "coordinates; ask for fewer"
        )
    canaries = run_canaries(spec, train, skeleton.tokenizer)
    fit = train + canaries.included_examples() if canaries else train
    delta = run_delta(spec, len(fit))
    if method.private:
        check_delta(delta, len(fit))
    scored = data.nonmembers if spec.eval_split == "validation" else data.test
    scored = scored[: spec.eval_limit] if spec.eval_limit else scored
    return Checked(spec, task, method, data, train, canaries, fit, delta, scored)


def prepare(c: Checked, *, with_base: bool = True) -> Prepared:
    """The checked run's models: the base read from disk once, the target a copy of it. The base
    waits on the CPU until training is done, so the training device's peak is the method's alone;
    without `with_base` (a process that only trains) the target is read from disk instead."""
    with part("model_load"):
        base = load_base(c.spec, "cpu") if with_base else None
        model = load_target(c.spec, c.method, base)
    return Prepared.of(c, model, base)


def load_finished(c: Checked, folder: RunFolder) -> Prepared:
    """A finished run's models, for a re-audit: its saved checkpoint and the base model."""
    base = load_base(c.spec, c.spec.device)
    return Prepared.of(c, load_checkpoint(c.spec, c.method, folder, base.info), base)


def train(p: Prepared) -> Trained:
    """The method's training, with peak memory (and where it goes) and wall time measured around it alone."""
    with PeakMemory(p.spec.device) as memory, MemoryBreakdown(p.model.model, memory.device) as parts:
        t0 = time.perf_counter()
        with p.model.training_precision(p.spec.training.precision):
            report = p.method.train(p.model, p.fit, p.spec, p.delta)
        wall = time.perf_counter() - t0
    pruner = p.model.token_pruner
    report.details["token_pruning"] = pruner.details() if pruner is not None else None
    visual = {"before": p.model.visual_tokens_per_image, "after": p.model.visual_tokens_kept}
    records, peak = memory.records, memory.device_record()
    breakdowns = [parts.breakdown(peak)] if peak is not None else []
    w = world()
    if w.distributed:  # every rank's memory, and the examples all of them processed
        records = [{**r, "rank": rank} for rank, rs in enumerate(w.gather(records)) for r in rs]
        breakdowns = [{**b, "rank": rank} for rank, bs in enumerate(w.gather(breakdowns)) for b in bs]
        report.samples, report.tokens = (int(x) for x in w.sum_floats(report.samples, report.tokens))
    return Trained(report, records, wall, p.model.parameter_counts(), visual, breakdowns or None)


def evaluate(task: Task, model: VisionLanguageModel, examples: list[Example]) -> Evaluation:
    tokens_before, t0 = model.tokens_encoded, time.perf_counter()
    metrics = task.evaluate(model, examples)
    return Evaluation(metrics, time.perf_counter() - t0, model.tokens_encoded - tokens_before, len(examples))


def zero_shot(p: Prepared) -> dict[str, float]:
    """The base model's utility on the examples the target is scored on; training is done, so the
    base moves to the run's device now."""
    p.base.to(p.spec.device)
    return p.task.evaluate(p.base, p.scored)


def save_checkpoint(p: Prepared, folder: RunFolder) -> None:
    """A plain HF checkpoint: LoRA adapters are merged first, so the audit then scores the merged model."""
    if p.spec.lora is not None:
        merge_lora(p.model)
    p.model.model.save_pretrained(folder.checkpoint)
    p.model.processor.save_pretrained(folder.checkpoint)


def references(
    p: Prepared, target_epochs: float, folder: RunFolder, log=print, attacks: list[str] | None = None
) -> ReferenceLosses | None:
    """The offline attacks' reference models (`attacks`, default the spec's, say whether any is
    needed), trained here from copies of the base model one at a time and kept as their losses:
    what the audit receives. The run folder's cached losses are reused when they match."""
    members, nonmembers = audit_sets(p.spec, p.train, p.data)
    attacks = p.spec.attacks if attacks is None else attacks
    plan = population.plan_references(p.spec, attacks, p.data.test, members + nonmembers, target_epochs)
    if plan is None:
        return None
    cached = population.cached_references(folder, plan)
    if cached is not None:
        return cached
    losses, k = [], len(plan.seeds)
    for i, (seed, data) in enumerate(zip(plan.seeds, plan.datasets)):
        log(f"audit: training reference model {i + 1}/{k} ({plan.steps} steps on {len(data)} test-split examples)")
        model = train_reference(p.spec, p.base, list(data), seed, plan.steps)
        losses.append(population.model_losses(model, plan))
        del model
    recipe = reference_spec(p.spec, plan.seeds[0], plan.steps)
    refs = population.assemble(plan, losses, {"method": recipe.method, "lr": recipe.training.lr})
    population.save_references(folder, refs)
    return refs


def audit(p: Prepared, refs: ReferenceLosses | None, folder: RunFolder):
    """The membership-inference attacks and canaries; (None, {}) when the spec asks for neither."""
    if not (p.spec.attacks or p.canaries):
        return None, {}
    return attack(p, refs, folder)


def attack(p: Prepared, refs: ReferenceLosses | None, folder: RunFolder, attacks: list[str] | None = None):
    """`attacks` (default the spec's) and the canaries on the prepared target, against its base
    model and the reference losses `refs`: (audit section, attack scores)."""
    members, nonmembers = audit_sets(p.spec, p.train, p.data)
    return audit_run(
        p.spec,
        p.spec.attacks if attacks is None else attacks,
        p.model,
        p.base,
        members,
        nonmembers,
        delta=p.delta,
        folder=folder,
        references=refs,
        canaries=p.canaries,
    )


def with_whitebox(audit_record: AuditRecord | None, whitebox: dict | None) -> AuditRecord | None:
    """The audit record with the white-box audit the training made (`TrainReport.whitebox`: its
    analysis runs on first read), if it made one."""
    if whitebox is None:
        return audit_record
    if audit_record is None:
        audit_record = AuditRecord(n_members=0, n_nonmembers=0, confidence=CONFIDENCE, attacks={})
    audit_record.whitebox = whitebox
    return audit_record


def reference_spec(spec: RunSpec, seed: int, steps: int) -> RunSpec:
    """The reference models' one recipe, whatever the target's method: non-private, at the
    non-private method's own learning rate, from the same base, LoRA adapters and trainable groups
    as the target, without its token pruning (it stands for a model trained elsewhere)."""
    return spec.replace(
        **{
            "method": "nonprivate",
            "method_options": {},
            "training.lr": None,  # resolved to nonprivate's default, not the target's
            "training.seed": seed,
            "training.steps": steps,
            "training.n_train": None,
            "training.precision": "fp32",
            "token_pruning": "none",
            "audit.gradient_canaries": 0,
        }
    )


def train_from_base(
    spec: RunSpec, data: list[Example], delta: float | None, base: VisionLanguageModel | None = None
) -> tuple[VisionLanguageModel, TrainReport]:
    """`spec`'s recipe on `data` from the base model (a copy of `base`, else read from disk), away
    from a run's phases: the attacks' reference models, unlearning's retrained and shadow models."""
    method = make_method(spec)
    model = load_target(spec, method, base)
    with model.training_precision(spec.training.precision):
        report = method.train(model, data, spec, delta)
    return model, report


def train_reference(
    spec: RunSpec, base: VisionLanguageModel, data: list[Example], seed: int, steps: int
) -> VisionLanguageModel:
    """A reference model of the offline attacks (`reference_spec`'s recipe), from a copy of `base`."""
    return train_from_base(reference_spec(spec, seed, steps), data, None, base)[0]  # δ: unused without privacy


def record(
    p: Prepared, trained: Trained, evaluation: Evaluation, zero_shot: dict[str, float], audit_record: AuditRecord | None
) -> RunResult:
    """The run's result; its systems' walls (`total_wall_s`, `phases`, `phase_parts`) are the
    runner's to fill once the report is written."""
    spec, data, model, report = p.spec, p.data, p.model, trained.report
    return RunResult(
        run_id=spec.run_id(),
        spec=spec.to_dict(),
        environment=environment(spec.device),
        dataset=DatasetRecord(
            task=spec.task,
            source=data.source,
            path=data.path,
            layout=data.layout,
            n_train=len(p.fit),
            n_canaries=len(p.fit) - len(p.train),
            n_members=audit_record.n_members if audit_record else 0,
            n_nonmembers=audit_record.n_nonmembers if audit_record else 0,
            n_test=evaluation.examples,
        ),
        model=ModelRecord(
            name=model.info.name,
            source=model.info.source,
            path=model.info.path,
            architecture=model.info.architecture,
            weights_sha256=model.info.weights_sha256,
            parameters_total=trained.parameters[0],
            parameters_trainable=trained.parameters[1],
            zero_shot=zero_shot,
        ),
        utility=UtilityRecord(
            split=spec.eval_split,
            primary_metric=p.task.primary_metric,
            higher_is_better=p.task.higher_is_better,
            metrics=evaluation.metrics,
            unavailable=p.task.unavailable_metrics(),
            notes=p.utility_notes,
        ),
        privacy=report.privacy.to_dict(),
        training=TrainingRecord(
            steps=report.steps,
            epochs=report.epochs,
            final_loss=report.losses[-1] if report.losses else None,
            loss_curve=[round(x, 5) for x in report.losses],
            details=report.details,
        ),
        systems=SystemsRecord(
            device=spec.device,
            peak_memory=trained.peak_memory,
            train=throughput(trained.wall_s, report.samples, report.tokens),
            eval=throughput(evaluation.wall_s, evaluation.examples, evaluation.tokens),
            total_wall_s=0.0,
            visual_tokens=trained.visual_tokens,
            memory_breakdown=trained.memory_breakdown,
        ),
        audit=audit_record,
    )


def write_files(folder: RunFolder, result: RunResult, scores: dict, trained: Trained) -> None:
    """The run's files after training but the result: the white-box audit's canary scores (so a
    re-summary needs no retraining) and the audit report. The runner writes the result last (a
    result file means a finished run)."""
    if trained.report.whitebox_scores is not None:
        included, canary_scores = trained.report.whitebox_scores
        write_npz(folder.whitebox_scores, included=included, scores=canary_scores)
    if result.audit is not None:
        write_report(folder, result.to_dict(), scores)

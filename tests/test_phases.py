"""The run's phases own every model load: the base model is read from disk once per run and
copied (bit for bit) for the target and the reference models; the audit gets the references as
losses and never calls back into the phases; the launcher and `dpbench audit` check inputs
without building the model; the same seed gives the same result."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest
import torch

from dpbench import phases
from dpbench.errors import DpbenchError
from dpbench.spec import RunSpec

ATTACKS = Path(__file__).resolve().parents[1] / "attacks"
RUN_MODULES = {"dpbench.phases", "dpbench.runner", "dpbench.reaudit", "dpbench.benchmark_worker"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_attacks_never_import_the_run_phases():
    files = sorted(ATTACKS.glob("*.py"))
    assert len(files) > 10
    for path in files:
        assert not imported_modules(path) & RUN_MODULES, path.name
    assert "train_reference" not in (ATTACKS / "audit.py").read_text() + (ATTACKS / "population.py").read_text()


@pytest.fixture
def disk_loads(monkeypatch):
    """The paths every model's weights were read from, in order (transformers' one loader)."""
    from transformers import AutoModelForImageTextToText

    loads, load = [], AutoModelForImageTextToText.from_pretrained

    def counted(path, *args, **kwargs):
        loads.append(Path(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", counted)
    return loads


def short_spec(checkpoint, **changes) -> RunSpec:
    return RunSpec.from_dict(
        {
            "method": "dpsgd",
            "model": str(checkpoint),
            "eval_limit": 8,
            "attacks": ["loss", "reference", "lira", "rmia"],
            "training": {"steps": 2, "batch_size": 8, "n_train": 16},
            "audit": {"references": 2, "reference_steps": 2, "canaries": 8},
        }
    ).replace(**changes)


def figures(record):
    """A result without what a second run may change: wall times, throughput, memory, dates, the machine."""
    if isinstance(record, dict):
        return {
            k: figures(v)
            for k, v in record.items()
            if k not in ("systems", "environment", "created") and not k.endswith("wall_s")
        }
    if isinstance(record, list):
        return [figures(v) for v in record]
    return record


def assert_parts_within_phases(systems, tolerance=0.01):
    """Each phase's parts (keyed "<phase>.<part>", disjoint) sum to no more than its wall."""
    parts = systems["phase_parts"]
    for phase, wall in systems["phases"].items():
        assert sum(v for k, v in parts.items() if k.split(".")[0] == phase) <= wall + tolerance, phase
    assert {k.split(".")[0] for k in parts} <= systems["phases"].keys()


def test_a_part_is_filed_under_the_phase_under_way_less_the_parts_it_excludes():
    from dpbench.timing import Walls, part

    with part("outside"):  # no run open: nothing to record, no error
        pass
    walls = Walls()
    with walls.opened():
        walls.lap("prepare", "audit")
        with part("attacks.loss", less=("forward",)):
            with part("forward"):
                time.sleep(0.05)
        with part("forward"):
            time.sleep(0.02)
        walls.lap("audit")
    assert walls.parts.keys() == {"audit.attacks.loss", "audit.forward"}
    assert walls.parts["audit.forward"] >= 0.07 and walls.parts["audit.attacks.loss"] < 0.03
    assert_parts_within_phases({"phases": walls.phases, "phase_parts": walls.parts})


def test_the_summary_shows_the_parts_on_one_line_with_the_attacks_summed():
    from dpbench.summary import _phase_parts

    parts = {"prepare.data": 1.0, "audit.forward": 8.0, "audit.attacks.lira": 0.25, "audit.attacks.mink++": 0.25}
    assert _phase_parts(parts) == "prepare: data 1.0 s; audit: forward 8.0 s, attacks 0.5 s"


def test_the_white_box_analysis_is_timed_as_its_own_part(checkpoint, tmp_path, monkeypatch):
    """The analysis runs lazily when the run first reads `report.whitebox`: its wall must land in
    audit.whitebox, not in another part or nowhere."""
    from dpbench.attacks import gradient_canaries
    from dpbench.runner import run

    analysis = gradient_canaries.whitebox_section

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return analysis(*args, **kwargs)

    monkeypatch.setattr(gradient_canaries, "whitebox_section", slow)
    spec = short_spec(checkpoint, attacks=["loss", "mink++"], **{"audit.references": 0, "audit.canaries": 0})
    systems = run(spec, tmp_path, log=lambda *_: None).to_dict()["systems"]
    assert systems["phase_parts"]["audit.whitebox"] >= 0.5
    assert_parts_within_phases(systems)


def test_a_run_reads_its_base_model_once_and_the_same_seed_gives_the_same_result(checkpoint, tmp_path, disk_loads):
    from dpbench.reaudit import reaudit
    from dpbench.runner import run

    spec = short_spec(checkpoint)
    first = run(spec, tmp_path / "a", save_checkpoint=True, log=lambda *_: None).to_dict()
    # before: the target, the base (zero-shot, the attacks' base-model signal) and each reference model
    assert disk_loads == [checkpoint]
    assert first["audit"]["references"]["models"] == 2 and set(first["audit"]["attacks"]) == set(spec.attacks)
    assert first["audit"]["canary"]["m"] == 8 and first["audit"]["whitebox"] is not None

    second = run(spec, tmp_path / "b", log=lambda *_: None).to_dict()
    assert figures(second) == figures(first)
    assert second["systems"]["phases"].keys() == {"prepare", "train", "evaluate", "zero_shot", "audit"}
    assert_parts_within_phases(second["systems"])
    assert {"prepare.data", "prepare.model_load", "train.calibration", "audit.references", "audit.forward"} | {
        f"audit.attacks.{a}" for a in spec.attacks
    } | {"audit.canaries", "audit.whitebox", "audit.report"} <= second["systems"]["phase_parts"].keys()

    disk_loads.clear()  # a re-audit: the base and the checkpoint, once each; the references' losses are cached
    again = reaudit(tmp_path / "a" / first["run_id"]).to_dict()
    assert disk_loads == [checkpoint, tmp_path / "a" / first["run_id"] / "checkpoint"]
    assert again["audit"]["references"] == first["audit"]["references"]
    assert again["audit"]["canary"]["correct"] == first["audit"]["canary"]["correct"]
    for name, attack in first["audit"]["attacks"].items():  # the saved checkpoint: the same scores, to rounding
        assert again["audit"]["attacks"][name]["auc"] == pytest.approx(attack["auc"])


def test_a_copy_of_the_base_is_the_checkpoint_as_read_from_disk(checkpoint, digit_examples):
    """What lets one load serve the target and the references: a copy, even of a base that has
    already scored examples, has the weights, trainable flags and outputs of a fresh load, and a
    reference model trained from it is the one trained from disk. The copy shares the base's
    encodings (the same processor's), and scores as the fresh load does."""
    from dpbench.attacks.signals import per_example_losses

    spec = short_spec(checkpoint)
    base = phases.load_base(spec, "cpu")
    per_example_losses(base, digit_examples)  # fills the base's caches and counters
    fresh, copy = phases.load_base(spec, "cpu"), base.copy()
    assert copy.model is not base.model and copy.tokens_encoded == 0 and copy._encodings is base._encodings
    assert base._encodings.prompt_ids and not fresh._encodings.prompt_ids
    state, fresh_state = copy.model.state_dict(), fresh.model.state_dict()
    assert state.keys() == fresh_state.keys()
    for name, tensor in state.items():
        assert tensor.dtype == fresh_state[name].dtype and torch.equal(tensor, fresh_state[name]), name
    assert [p.requires_grad for p in copy.model.parameters()] == [p.requires_grad for p in fresh.model.parameters()]
    assert not copy.model.training and not fresh.model.training

    data = digit_examples[:8]
    from_copy = phases.train_reference(spec, base, data, seed=3, steps=2)
    from_disk = phases.train_from_base(phases.reference_spec(spec, 3, 2), data, None)[0]
    for (name, a), b in zip(from_copy.model.state_dict().items(), from_disk.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert (per_example_losses(from_copy, digit_examples) == per_example_losses(from_disk, digit_examples)).all()
    for (name, a), b in zip(base.model.state_dict().items(), fresh_state.values()):  # the base itself never trains
        assert torch.equal(a, b), name


def test_the_checks_read_no_weights_and_see_the_models_shape(checkpoint, tmp_path, monkeypatch):
    from transformers import AutoModelForImageTextToText

    from dpbench import distributed, runner
    from dpbench.models.loading import load_model, load_skeleton

    counts = {}
    for lora in (None, "r=2,alpha=4"):  # the skeleton's trainable coordinates are the loaded model's
        spec = short_spec(checkpoint, lora=lora)
        skeleton, loaded = load_skeleton(spec.model), load_model(spec.model, "cpu")
        for m in (skeleton, loaded):
            phases.setup_parameters(m, spec)
        assert skeleton.parameter_counts() == loaded.parameter_counts()
        counts[lora] = loaded.parameter_counts()
    assert counts[None][1] > counts["r=2,alpha=4"][1]

    def no_loading(*args, **kwargs):
        raise AssertionError("a check read the model's weights")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", no_loading)
    checked = phases.check(short_spec(checkpoint))
    assert checked.canaries is not None and len(checked.fit) == 16 + int(checked.canaries.included.sum())
    trainable = counts["r=2,alpha=4"][1]
    too_many = {"lora": "r=2,alpha=4", "audit.canary_placement": "model", "audit.gradient_canaries": trainable + 2}
    with pytest.raises(DpbenchError, match=f"exceeds the model's {trainable} trainable coordinates"):
        phases.check(short_spec(checkpoint, **too_many))

    launched = []  # `--nproc`: the launcher checks as one process would, and leaves the loading to the ranks
    monkeypatch.setattr(distributed, "launch", lambda nproc, args: launched.append(nproc) or 0)
    runner.launch(short_spec(checkpoint, **{"training.nproc": 2}), tmp_path)
    assert launched == [2]


def test_the_audit_scores_a_seeded_sample_of_at_most_audit_members_each_side():
    """`audit.members` caps both sides alike; the same spec draws the same examples (a re-audit
    scores what the run scored), another seed others; null keeps every member."""
    from dpbench.examples import Example
    from dpbench.tasks.base import TaskData

    make = lambda prefix, n: [Example(uid=f"{prefix}{i}", prompt="q", target="a", image=None) for i in range(n)]  # noqa: E731
    train, non = make("t", 300), make("n", 200)
    data = TaskData(train=train, nonmembers=non, test=[], source="test", path=None, layout=None)
    spec = RunSpec.from_dict({"audit": {"members": 50}})
    members, nonmembers = phases.audit_sets(spec, train, data)
    assert len(members) == len(nonmembers) == 50 and len({e.uid for e in members}) == 50
    assert {e.uid[0] for e in members} == {"t"} and {e.uid[0] for e in nonmembers} == {"n"}
    assert (members, nonmembers) == phases.audit_sets(spec, train, data)
    other = phases.audit_sets(spec.replace(**{"training.seed": 1}), train, data)
    assert other[0] != members and other[1] != nonmembers
    assert nonmembers != non[:50]  # a sample, not the task's first non-members
    every = phases.audit_sets(spec.replace(**{"audit.members": None}), train, data)
    assert len(every[0]) == len(every[1]) == 200 and every[1] == non
    assert RunSpec().audit.members == 500 and RunSpec().audit.references == 0


def test_every_member_audited_keeps_the_tasks_first_non_members_when_members_are_fewer():
    """`audit.members: null` (what a record from before the cap reads as) re-audits what such a
    run scored: the task's first n non-members, also when the training set is the smaller side."""
    from dpbench.examples import Example
    from dpbench.tasks.base import TaskData

    make = lambda prefix, n: [Example(uid=f"{prefix}{i}", prompt="q", target="a", image=None) for i in range(n)]  # noqa: E731
    train, non = make("t", 40), make("n", 200)
    data = TaskData(train=train, nonmembers=non, test=[], source="test", path=None, layout=None)
    members, nonmembers = phases.audit_sets(RunSpec.from_dict({"audit": {"members": None}}), train, data)
    assert len(members) == 40 and nonmembers == non[:40]

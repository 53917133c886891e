import pytest

from dpbench.errors import DpbenchError
from dpbench.spec import RunSpec, load_spec_file, merge


def test_round_trip_and_stable_hash():
    spec = RunSpec().replace(**{"privacy.epsilon": 3.0, "method_options": {"k": 2}})
    again = RunSpec.from_dict(spec.to_dict())
    assert again == spec and again.spec_hash() == spec.spec_hash()
    assert spec.replace(**{"training.seed": 1}).run_id() != spec.run_id()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"privacy.epsilon": 0.0}, "epsilon"),
        ({"privacy.epsilon": -1.0}, "epsilon"),
        ({"privacy.epsilon": float("inf")}, "epsilon"),
        ({"privacy.delta": 1.5}, "delta"),
        ({"privacy.delta": 0.0}, "delta"),
        ({"privacy.accountant": "gdp"}, "accountant"),
        ({"training.steps": 0}, "steps"),
        ({"training.lr": 0.0}, "lr"),
        ({"eval_split": "train"}, "eval_split must be one of test, validation"),
        (
            {"training.lr": "1e-3"},
            r"training.lr must be a number or null, got '1e-3' \(YAML reads 1e-3 as text: write it with a dot",
        ),
        ({"privacy.epsilon": "eight"}, "privacy.epsilon must be a number or null, got 'eight'"),
        ({"training.steps": 1.5}, "training.steps must be an integer, got 1.5"),
        ({"audit.references": True}, "audit.references must be an integer, got True"),
        ({"device": 0}, "device must be a string, got 0"),
    ],
)
def test_invalid_values_are_rejected_with_a_clear_message(change, message):
    with pytest.raises(DpbenchError, match=message):
        RunSpec().replace(**change)


def test_unknown_fields_are_rejected():
    with pytest.raises(DpbenchError, match="unknown run-spec field"):
        RunSpec.from_dict({"mehtod": "dpsgd"})
    with pytest.raises(DpbenchError, match="bad run spec"):
        RunSpec.from_dict({"privacy": {"epsilonn": 1}})


def test_yaml_and_toml_configs(tmp_path):
    (tmp_path / "a.yaml").write_text("method: nonprivate\ntraining:\n  steps: 5\n")
    (tmp_path / "b.toml").write_text('method = "dpsgd"\n[privacy]\nepsilon = 2.0\n')
    a = RunSpec.from_dict(load_spec_file(tmp_path / "a.yaml"))
    b = RunSpec.from_dict(merge(load_spec_file(tmp_path / "b.toml"), {"training": {"seed": 4}}))
    assert (a.method, a.training.steps) == ("nonprivate", 5)
    assert (b.method, b.privacy.epsilon, b.training.seed, b.training.steps) == (
        "dpsgd",
        2.0,
        4,
        RunSpec().training.steps,
    )
    (tmp_path / "c.yaml").write_text("- not a mapping\n")
    with pytest.raises(DpbenchError, match="mapping"):
        load_spec_file(tmp_path / "c.yaml")


def test_a_spec_without_lr_takes_its_methods_default_and_records_it():
    from dpbench.methods.base import METHODS

    assert METHODS.get("nonprivate").default_lr < METHODS.get("dpsgd").default_lr  # else the table is moot
    for method in ("nonprivate", "dpsgd", "dualpriv"):
        spec = RunSpec.from_dict({"method": method})
        assert spec.training.lr == METHODS.get(method).default_lr == spec.to_dict()["training"]["lr"]
    assert RunSpec(method="dpzo").training.lr is None  # its step size is its own option
    assert RunSpec.from_dict({"method": "nonprivate", "training": {"lr": 3e-3}}).training.lr == 3e-3
    # once resolved the rate is the spec's own: a copy under another method keeps it (the audit's
    # reference models train as the target did)
    assert RunSpec(method="dpsgd").replace(method="nonprivate").training.lr == METHODS.get("dpsgd").default_lr
    # the stored spec reproduces its hash, so run ids stay stable
    spec = RunSpec(method="nonprivate")
    assert RunSpec.from_dict(spec.to_dict()).run_id() == spec.run_id()


def test_a_method_recording_its_options_gets_new_run_ids_when_a_default_moves(monkeypatch):
    from dpbench.leaderboard.aggregate import options
    from dpbench.methods.dpzo import DPZO

    spec = RunSpec(method="dpzo")
    assert spec.method_options["lr"] == DPZO.options["lr"]  # the value that ran is in the spec
    assert RunSpec.from_dict(spec.to_dict()) == spec
    assert options(spec.to_dict()) == ""  # at its defaults, the leaderboard names no option
    assert options(RunSpec(method="dpzo", method_options={"mu": 0.01}).to_dict()) == '{"mu": 0.01}'
    monkeypatch.setitem(DPZO.options, "lr", DPZO.options["lr"] * 2)
    assert RunSpec(method="dpzo").run_id() != spec.run_id()
    # methods whose committed results predate the field keep their run ids: options as given
    assert RunSpec(method="dpsgd").method_options == {}


def test_trainable_names_only_parameter_groups_every_architecture_has(fresh_tiny_model):
    from dpbench.models.architectures import ARCHITECTURES
    from dpbench.models.lora import setup_parameters
    from dpbench.spec import TRAINABLE_GROUPS

    with pytest.raises(DpbenchError, match="unknown trainable group.*bogus"):
        RunSpec.from_dict({"training": {"trainable": "projector,bogus"}})
    spaced = RunSpec.from_dict({"training": {"trainable": " vision_tower , projector"}})
    model = fresh_tiny_model()
    groups = model.PARAMETER_GROUPS
    expected = {
        n for n, _ in model.model.named_parameters() if n.startswith((*groups["vision_tower"], *groups["projector"]))
    }
    assert expected and set(setup_parameters(model, spaced)) == expected  # the spaces are not part of the names
    for name in ARCHITECTURES:
        assert tuple(ARCHITECTURES.get(name).parameter_groups) == TRAINABLE_GROUPS

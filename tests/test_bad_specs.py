"""Several hundred bad run specs, generated from the spec's own fields: each is one line on stderr,
exit code 2, no traceback, and nothing written."""

from __future__ import annotations

import dataclasses
import math

import pytest
import yaml

from dpbench.spec import AuditSpec, PrivacySpec, RunSpec, TrainingSpec

WRONG_TYPES = ("text", [1], {"a": 1}, True)
# per field: values its type admits but its rules refuse
OUT_OF_RANGE = {
    "privacy.epsilon": [0, -1.0, math.inf, math.nan, 10**400],
    "privacy.delta": [0, 1.5, -0.1, math.nan],
    "privacy.max_grad_norm": [0, -1.0, None, math.inf, 10**400],
    "privacy.accountant": ["nope", None],
    "training.steps": [0, -3, None, 1.5, 2**31, 2**63],  # the libraries' limits: below 2**31
    "training.batch_size": [0, -1, None, 2.5, 2**31],
    "training.physical_batch_size": [0, -1, None, 2**31],
    "training.lr": [0, -1e-3, math.inf],
    "training.seed": [None, 0.5, -1, 2**63, 2**64, -(2**63) - 1],  # torch and numpy both take 0 .. 2**63 - 1
    "training.n_train": [0, 1, -5, 10**9, 2**31],
    "training.nproc": [0, 2**31],
    "training.trainable": [",", "", "nope", "projector,nope", None],
    "audit.references": [-1, None, 2**31],
    "audit.reference_steps": [0, -1, 2**31],
    "audit.canaries": [-1, 1, 10**9, 2**31],
    "audit.canary_kind": ["nope", None],
    "audit.gradient_canaries": [-1, 1, 10**9, 2**31],
    "task": ["nope", None],
    "method": ["nope", None],
    "model": ["nope", None],
    "device": ["tpu", "cuda:x", "cuda", "cuda:7", "mps", "", None],
    "data_dir": ["/no/such/dir"],
    "eval_limit": [0, -1, 2**31],
    "model_layers": [0, 2**31],
    "eval_split": ["train", None],
}
WHOLE_SECTIONS = {
    "privacy": [8, "high", [1, 2], None],
    "training": [150, "long", [1]],
    "audit": [True, "yes", [0]],
    "method_options": [[1, 2], "clipping=ghost", 3, {"nope": 1}, {"clipping": "sideways"}, {"secure_rng": math.nan}],
    "attacks": ["loss", [3], ["nope"], {"loss": 1}],
    "token_pruning": [
        "weird",
        3,
        {"strategy": "random", "keep_ratio": 2.0},
        {"keep_count": -1},
        {"strategy": "random", "seed": 2**64},
        {"strategy": "random", "keep_count": 2**31},
    ],
    "lora": ["r=x", 3, {"r": 0}, {"r": 2**31, "alpha": 16}, {"r": 8, "alpha": 10**400}],
    "not_a_field": [1],
}


def scalar_fields() -> list[str]:
    names = [f"{prefix}{f.name}" for prefix, cls in (("privacy.", PrivacySpec), ("training.", TrainingSpec),
             ("audit.", AuditSpec)) for f in dataclasses.fields(cls)]  # fmt: skip
    sections = {"privacy", "training", "audit", "method_options", "attacks", "lora", "token_pruning"}
    return names + [f.name for f in dataclasses.fields(RunSpec) if f.name not in sections]


def nest(key: str, value) -> dict:
    head, _, rest = key.partition(".")
    return {head: nest(rest, value) if rest else value}


METHODS = ("dpsgd", "dpzo")  # a gradient method and the zeroth-order one: each bad value under both


def cases() -> list[tuple[str, dict]]:
    out = []
    for method in METHODS:
        for key in scalar_fields():
            for value in (*WRONG_TYPES, *OUT_OF_RANGE.get(key, ())):
                if key == "training.lr" and value is None:
                    continue  # None: the method's default
                spec = nest(key, value) if key == "method" else {"method": method, **nest(key, value)}
                out.append((f"{method}:{key}={value!r}", spec))
        for key, values in WHOLE_SECTIONS.items():
            out += [(f"{method}:{key}={v!r}", {"method": method, key: v}) for v in values]
    return out


CASES = cases()


def test_the_table_covers_every_field_many_ways():
    assert len(CASES) >= 200
    covered = {label.split("=")[0].split(":")[1] for label, _ in CASES}
    assert set(scalar_fields()) <= covered


@pytest.mark.parametrize("label, spec", CASES, ids=[label for label, _ in CASES])
def test_a_bad_spec_is_one_line_and_exit_2(label, spec, tmp_path, capsys, run_cli):
    config = tmp_path / "spec.yaml"
    config.write_text(yaml.safe_dump(spec))  # PyYAML writes NaN and inf as .nan and .inf
    runs = tmp_path / "runs"
    code = run_cli("run", "--config", str(config), "--runs-dir", str(runs))
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("Notice:")]  # the embedded-data notice of a valid load
    assert code == 2, (label, err)
    assert len(err) == 1 and err[0].startswith("error: "), (label, err)
    assert "Traceback" not in err[0]
    assert not runs.exists(), label  # nothing written

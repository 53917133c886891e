"""The run spec: a frozen, serialisable description from which a run is reproducible.

CLI flags and an optional YAML/TOML file both build it (flags win). Its hash names the run
folder together with a readable prefix, as HELM's run-spec names do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpbench.checks import COUNT_LIMIT, check_seed, finite, shown
from dpbench.errors import DpbenchError
from dpbench.files import find_problem, read_config
from dpbench.models.lora import LoraSpec
from dpbench.models.pruning_spec import ENTRY_KEYS, TokenPruning
from dpbench.registry import METHODS
from dpbench.schemas import spec_errors

ACCOUNTANTS = ("rdp", "prv")
# the black-box one-run audit's canaries (dpbench.attacks.canary_audit): a random-noise image whose
# target is a token no training target uses, or a training example with a wrong answer
CANARY_KINDS = ("memorable", "mislabelled")
MAX_GRADIENT_CANARIES = 200_000
# a gradient method's default (methods with an audit block: Method.audit_block); benchmarks/audit-power.md
# has its power and cost
AUDIT_CANARIES = 100_000
# members (and as many non-members) the attacks score by default: attacks/README.md ("Audit") says what it
# costs and buys
AUDIT_MEMBERS = 500
# the auditor keeps every step's release at every canary (float32): steps × canaries at most this
MAX_CANARY_RELEASES = 250_000_000
# where the white-box gradient canaries sit (dpbench.attacks.gradient_canaries)
CANARY_PLACEMENTS = ("audit-block", "model")
# "validation": the task's held-out validation examples (never trained on; also the audit's
# non-members), for choosing hyperparameters without looking at the test split
EVAL_SPLITS = ("test", "validation")
PRECISIONS = ("fp32", "bf16")
TRAINABLE_GROUPS = ("vision_tower", "projector", "language_model")  # every architecture's parameter groups
# fields whose default changed after results were recorded: a record without the field means this
RECORD_DEFAULTS = {"audit.gradient_canaries": 0, "audit.members": None}
# fields added after results were committed, with the value those results had (their default
# then): a spec holding it leaves the field out of its hash, so older specs keep their hash (and
# their run ids); token_pruning likewise at its method's default
HASH_OMITTED_AT_DEFAULT = {
    "audit.gradient_canaries": 0,
    "audit.members": None,
    "lora": None,
    "eval_split": "test",
    "audit.canary_kind": "memorable",
    "audit.canary_placement": "audit-block",
    "training.nproc": 1,
    "training.precision": "fp32",
    "model_layers": None,
    "model_hidden_size": None,
}


@dataclass(frozen=True)
class PrivacySpec:
    epsilon: float | None = 8.0  # None: no target (the nonprivate method ignores privacy)
    delta: float | None = None  # None: 1 / (n_train * 10), fixed once the data is loaded
    # the headline ε and σ's calibration: PRV (Gopi et al. 2021), tight; RDP is reported beside it
    accountant: str = "prv"
    max_grad_norm: float = 1.0


@dataclass(frozen=True)
class TrainingSpec:
    steps: int = 150
    batch_size: int = 64  # expected logical batch under Poisson sampling
    physical_batch_size: int = 32  # bounds memory: Opacus' BatchMemoryManager splits logical batches
    lr: float | None = None  # None: the method's `default_lr` (DP and non-private optima differ)
    seed: int = 0
    n_train: int | None = None  # None: every training example of the task
    trainable: str = "projector,language_model"
    # training processes (DDP; dpbench.distributed): the expected batch is split across them, so
    # the run differs from a one-process run in its sampling and is a configuration of its own
    nproc: int = 1
    precision: str = "fp32"  # or "bf16": training forwards under autocast, fp32 master weights


@dataclass(frozen=True)
class AuditSpec:
    # members the attacks score, each matched by a non-member (a seeded sample of each); None: every
    # member. A fixed sample keeps the audit's cost apart from the training set's size
    members: int | None = AUDIT_MEMBERS
    # reference models for lira / rmia (trained on the test split, each as costly as a non-private
    # fine-tuning); 0: skip those attacks
    references: int = 0
    reference_steps: int | None = None  # None: as many epochs over their data as the target had
    canaries: int = 0  # one-run canary audit; > 0 CHANGES the training set (each canary in w.p. 1/2)
    canary_kind: str = "memorable"  # or "mislabelled" (attacks/canary_audit.py)
    # white-box audit: gradient canaries inside the training steps; None: the method's default
    # (on an audit-only block, so training is unchanged), 0: off
    gradient_canaries: int | None = None
    canary_placement: str = "audit-block"  # or "model": on trained coordinates (they change training)


@dataclass(frozen=True)
class RunSpec:
    task: str = "scienceqa"
    method: str = "dpsgd"
    model: str = "tiny-llava"
    # a random-init systems model's truncation (dpbench.models.random_init.ModelShape); None: published
    model_layers: int | None = None
    model_hidden_size: int | None = None
    data_dir: str | None = None
    device: str = "cpu"
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    method_options: dict[str, Any] = field(default_factory=dict)
    attacks: tuple[str, ...] = ("loss", "zlib", "mink", "mink++", "reference", "image", "lira", "rmia")
    audit: AuditSpec = field(default_factory=AuditSpec)
    eval_limit: int | None = None
    eval_split: str = "test"
    lora: LoraSpec | None = None  # LoRA adapters on the language model; None: no adapters
    token_pruning: TokenPruning | None = None  # visual-token pruning; None: the method's default

    def __post_init__(self) -> None:
        # Resolved here, so the stored spec (and its hash) names the learning rate and the token
        # pruning actually used.
        method = registered_method(self.method)
        if self.training.lr is None and method is not None and method.default_lr is not None:
            object.__setattr__(self, "training", dataclasses.replace(self.training, lr=method.default_lr))
        if self.token_pruning is None:
            object.__setattr__(self, "token_pruning", default_token_pruning(self.method))
        if self.audit.gradient_canaries is None and isinstance(self.audit, AuditSpec):
            # the default never exceeds what the auditor may keep: a long run audits with fewer
            steps = self.training.steps  # checked later (a bad value is one line there, not a TypeError here)
            ok = isinstance(steps, int) and not isinstance(steps, bool) and steps > 0
            m = min(AUDIT_CANARIES, MAX_CANARY_RELEASES // steps) if ok else AUDIT_CANARIES
            m = m if m >= 2 else 0  # a run too long for even 2 canaries' releases: no white-box audit
            m = m if method is not None and method.audit_block else 0
            object.__setattr__(self, "audit", dataclasses.replace(self.audit, gradient_canaries=m))
        if method is not None and method.spec_records_options and isinstance(self.method_options, dict):
            object.__setattr__(self, "method_options", {**method.options, **self.method_options})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["attacks"] = list(self.attacks)
        d["lora"] = self.lora.to_dict() if self.lora is not None else None
        d["token_pruning"] = self.token_pruning.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        if not isinstance(d, dict):
            raise DpbenchError(f"a run spec is a mapping of its fields, got {type(d).__name__}")
        d = dict(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise DpbenchError(f"unknown run-spec field(s): {', '.join(sorted(map(str, unknown)))}")
        check_sections(d)
        try:
            privacy = PrivacySpec(**d.pop("privacy", {}))
            training = TrainingSpec(**d.pop("training", {}))
            audit = AuditSpec(**d.pop("audit", {}))
        except TypeError as e:
            raise DpbenchError(f"bad run spec: {e}") from None
        d["attacks"] = tuple(d.get("attacks", cls.attacks))
        d["lora"] = LoraSpec.from_value(d.get("lora"))
        d["token_pruning"] = TokenPruning.from_value(
            d.get("token_pruning"), default_token_pruning(d.get("method", cls.method))
        )
        return cls(privacy=privacy, training=training, audit=audit, **d).validated()

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> RunSpec:
        """A spec as a result or a run folder recorded it: a field added since means there what it
        meant when the record was written (RECORD_DEFAULTS), not today's default."""
        return cls.from_dict(as_recorded(d))

    def replace(self, **changes: Any) -> RunSpec:
        """A copy with top-level or dotted (`privacy.epsilon`) fields changed."""
        d = self.to_dict()
        for key, value in changes.items():
            node = d
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
        return RunSpec.from_dict(d)

    def validated(self) -> RunSpec:
        for prefix, part in (
            ("", self),
            ("privacy.", self.privacy),
            ("training.", self.training),
            ("audit.", self.audit),
        ):
            check_scalar_types(part, prefix)
        check_seed("training.seed", self.training.seed)
        p, t = self.privacy, self.training
        if p.epsilon is not None and not (math.isfinite(p.epsilon) and p.epsilon > 0):
            raise DpbenchError(f"epsilon must be a positive finite number, got {p.epsilon}")
        if p.delta is not None and not (0 < p.delta < 1):
            raise DpbenchError(f"delta must lie in (0, 1/n_train), got {p.delta}")
        if p.accountant not in ACCOUNTANTS:
            raise DpbenchError(f"accountant must be one of {', '.join(ACCOUNTANTS)}, got {p.accountant!r}")
        if not p.max_grad_norm > 0:
            raise DpbenchError(f"max_grad_norm must be positive, got {p.max_grad_norm}")
        for name in ("steps", "batch_size", "physical_batch_size", "nproc"):
            if getattr(t, name) < 1:
                raise DpbenchError(f"{name} must be at least 1, got {getattr(t, name)}")
        if t.lr is not None and not t.lr > 0:  # None: a method that takes no Adam lr (dpzo), or an unknown one
            raise DpbenchError(f"lr must be positive, got {t.lr}")
        if t.n_train is not None and t.n_train < 2:
            raise DpbenchError(f"n_train must be at least 2, got {t.n_train}")
        for name in ("model_layers", "model_hidden_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise DpbenchError(f"{name} must be at least 1, got {getattr(self, name)}")
        a = self.audit
        if a.members is not None and a.members < 2:
            raise DpbenchError(f"audit.members must be at least 2 (or null: every member), got {a.members}")
        if a.references < 0:
            raise DpbenchError(f"audit.references must be >= 0, got {a.references}")
        if a.canaries < 0 or a.canaries == 1:
            raise DpbenchError(f"audit.canaries must be 0 (off) or at least 2, got {a.canaries}")
        if a.canary_kind not in CANARY_KINDS:
            raise DpbenchError(f"audit.canary_kind must be one of {', '.join(CANARY_KINDS)}, got {a.canary_kind!r}")
        if a.canary_placement not in CANARY_PLACEMENTS:
            raise DpbenchError(
                f"audit.canary_placement must be one of {', '.join(CANARY_PLACEMENTS)}, got {a.canary_placement!r}"
            )
        if a.gradient_canaries < 0 or a.gradient_canaries == 1:
            raise DpbenchError(f"audit.gradient_canaries must be 0 (off) or at least 2, got {a.gradient_canaries}")
        if a.gradient_canaries > MAX_GRADIENT_CANARIES:  # the auditor keeps steps × canaries releases
            raise DpbenchError(
                f"audit.gradient_canaries must be at most {MAX_GRADIENT_CANARIES} (the auditor keeps every step's "
                f"release of each), got {a.gradient_canaries}"
            )
        if a.gradient_canaries * t.steps > MAX_CANARY_RELEASES:
            raise DpbenchError(
                f"audit.gradient_canaries × training.steps must be at most {MAX_CANARY_RELEASES:,} (the auditor keeps "
                f"every release of each canary): {a.gradient_canaries} × {t.steps}; give fewer canaries "
                f"(--gradient-canaries {MAX_CANARY_RELEASES // t.steps})"
            )
        if a.reference_steps is not None and a.reference_steps < 1:
            raise DpbenchError(f"audit.reference_steps must be at least 1, got {a.reference_steps}")
        if t.precision not in PRECISIONS:
            raise DpbenchError(f"precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
        if self.eval_split not in EVAL_SPLITS:
            raise DpbenchError(f"eval_split must be one of {', '.join(EVAL_SPLITS)}, got {self.eval_split!r}")
        groups = [g.strip() for g in t.trainable.split(",") if g.strip()]
        if not groups:
            raise DpbenchError(
                f"training.trainable names no parameter group: give one or more of {', '.join(TRAINABLE_GROUPS)} "
                "(comma-separated)"
            )
        if unknown := [g for g in groups if g not in TRAINABLE_GROUPS]:
            raise DpbenchError(
                f"unknown trainable group(s) {', '.join(unknown)}; choose from {', '.join(TRAINABLE_GROUPS)}"
            )
        if not DEVICE.fullmatch(self.device):
            raise DpbenchError(f"device must be cpu, cuda, cuda:N or mps, got {self.device!r}")
        if t.nproc > 1 and self.device not in ("cpu", "cuda"):
            raise DpbenchError(
                f"nproc = {t.nproc} runs a process per CPU worker or per local GPU: use --device cpu or cuda "
                f"(each rank takes its own GPU), not {self.device}"
            )
        if t.nproc > t.batch_size:
            raise DpbenchError(f"nproc = {t.nproc} exceeds batch_size = {t.batch_size}: each process needs examples")
        if self.lora is not None and "language_model" not in [g.strip() for g in t.trainable.split(",")]:
            raise DpbenchError(
                "--lora adapts the language model: keep language_model in --trainable "
                "(with LoRA it trains the adapters only)"
            )
        problem = find_problem(self.to_dict())  # method options: a result is JSON, which has no NaN
        if problem is not None:
            raise DpbenchError(f"run spec {problem[0]}: {problem[1]}")
        errors = spec_errors(self.to_dict())  # the result schema's own rules: nothing it would reject runs
        if errors:
            raise DpbenchError(f"run spec {errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
        return self

    def spec_hash(self) -> str:
        d = self.to_dict()
        for name, default in HASH_OMITTED_AT_DEFAULT.items():
            *parents, leaf = name.split(".")
            node = d
            for part in parents:
                node = node[part]
            if node[leaf] == default:
                del node[leaf]
        if self.token_pruning == default_token_pruning(self.method):  # as before the field existed
            del d["token_pruning"]
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def run_id(self) -> str:
        eps = "inf" if self.privacy.epsilon is None or self.method == "nonprivate" else f"{self.privacy.epsilon:g}"
        model = Path(self.model).name.replace("/", "_")
        return f"{self.task}-{self.method}-eps{eps}-{model}-s{self.training.seed}-{self.spec_hash()}"


DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?|mps")
# the spec's nested sections: a value of another type (`privacy: 8`) is refused, never replaced by defaults
SECTIONS = ("privacy", "training", "audit", "method_options")


def check_sections(d: dict[str, Any]) -> None:
    for name in SECTIONS:
        if name in d and not isinstance(d[name], dict):
            raise DpbenchError(
                f"{name} must be a mapping of its fields (e.g. {name}: {{...}}), got {type(d[name]).__name__} "
                f"{d[name]!r}"
            )
    if "attacks" in d and not (
        isinstance(d["attacks"], (list, tuple)) and all(isinstance(a, str) for a in d["attacks"])
    ):
        raise DpbenchError(f"attacks must be a list of attack names, got {d['attacks']!r}")


# a spec file's values arrive untyped: each scalar field is checked against its annotation
SCALAR_TYPES = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "str": ((str,), "a string"),
    "None": ((type(None),), "null"),
}


def as_recorded(d: Any) -> Any:
    """A copy of a recorded spec dict with each field added since (RECORD_DEFAULTS) at what it
    meant when the record was written; anything but a dict unchanged (`from_dict` says why)."""
    if not isinstance(d, dict):
        return d
    d = json.loads(json.dumps(d))
    for name, then in RECORD_DEFAULTS.items():
        *parents, leaf = name.split(".")
        node = d
        for part in parents:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.setdefault(leaf, then)
    return d


def check_scalar_types(part: Any, prefix: str) -> None:
    for f in dataclasses.fields(part):
        kinds = [k.strip() for k in str(f.type).split("|")]
        if not all(k in SCALAR_TYPES for k in kinds):
            continue  # containers (attacks, method options, lora) are checked where they are read
        value = getattr(part, f.name)
        if isinstance(value, bool) or not any(isinstance(value, SCALAR_TYPES[k][0]) for k in kinds):
            wanted = " or ".join(SCALAR_TYPES[k][1] for k in kinds)
            hint = f" (YAML reads {value} as text: write it with a dot, e.g. 1.0e-3)" if _number_text(value) else ""
            raise DpbenchError(f"{prefix}{f.name} must be {wanted}, got {value!r}{hint}")
        if "float" in kinds and isinstance(value, (int, float)) and not finite(value):
            raise DpbenchError(f"{prefix}{f.name} must be a finite number, got {shown(value)}")
        if kinds[0] == "int" and isinstance(value, int) and f.name != "seed" and value >= COUNT_LIMIT:
            raise DpbenchError(f"{prefix}{f.name} must be below 2**31 = {COUNT_LIMIT}, got {shown(value)}")


def _number_text(value: Any) -> bool:
    try:
        return isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        return False


def method_override(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The spec fields a method entry sets: `dualpriv` with {clipping: ghost, keep_ratio: 0.5} is
    method dualpriv, method option clipping, and the method's token pruning at keep 0.5."""
    override: dict[str, Any] = {
        "method": name,
        "method_options": {k: v for k, v in options.items() if k not in ENTRY_KEYS},
    }
    pruning = {ENTRY_KEYS[k]: v for k, v in options.items() if k in ENTRY_KEYS}
    if pruning:
        override["token_pruning"] = pruning["strategy"] if set(pruning) == {"strategy"} else pruning
    return override


def registered_method(name: str):
    """The registered method class, or None for a name not registered (refused later, with hints)."""
    return METHODS.get(name) if isinstance(name, str) and name in METHODS else None


def default_token_pruning(method: str) -> TokenPruning:
    registered = registered_method(method)
    return registered.default_token_pruning if registered is not None else TokenPruning("none")


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML run-spec file into a (possibly partial) spec dict."""
    path = Path(path)
    data = read_config(path)  # regular, capped, parsed, no NaN, bounded nesting
    if not isinstance(data, dict):
        raise DpbenchError(f"config {path} must hold a mapping of run-spec fields")
    try:
        check_sections(data)  # before flags merge into it: `privacy: 8` must not become the defaults
    except DpbenchError as e:
        raise DpbenchError(f"config {path}: {e}") from None
    return data


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out

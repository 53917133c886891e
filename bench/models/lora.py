"""LoRA adapters on the language model: `dpbench run --lora r=8,alpha=16,targets=q_proj,v_proj`.

Adapters are injected with peft's `inject_adapter_in_model`, never `get_peft_model`: its
wrapper would prefix every module name (`base_model.model.…`), breaking the name-prefix
parameter groups of `VisionLanguageModel.set_trainable` and the hooks token pruning puts on
`model.model.multi_modal_projector`. Injection keeps the model's class and module paths; each
adapted Linear becomes a peft `lora.Linear` holding `base_layer`, `lora_A` and `lora_B`. The
last two are plain `nn.Linear`s, so Opacus' per-sample rules (hooks and ghost) cover them as
they are, and DP-ZO perturbs them like any other trainable tensor.

Only the language model's Linear layers are adapted (the modules of the `language_model`
parameter group: `model.language_model.…` and `lm_head` for LLaVA): the vision tower has
`q_proj`/`v_proj` too, and a bare suffix must not reach it.

torch and peft load lazily: `dpbench.spec` imports `LoraSpec`, and reading or validating a
spec should not pay for them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from dpbench.checks import COUNT_LIMIT, finite
from dpbench.errors import DpbenchError

if TYPE_CHECKING:
    from dpbench.models.base import VisionLanguageModel
    from dpbench.spec import RunSpec

EXAMPLE = "r=8,alpha=16,targets=q_proj,v_proj"
KEYS = ("r", "alpha", "dropout", "targets")
_TARGET = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")  # a module name or dotted suffix of one
_ADAPTER_PARAM = re.compile(r"\.lora_[AB]\.")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class LoraSpec:
    """Rank r, scale alpha / r, dropout on the adapter's input, and the adapted modules, each
    named by a suffix of its module name inside the language model (`q_proj`, `mlp.up_proj`)."""

    r: int
    alpha: float
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")

    def __post_init__(self):
        targets = self.targets.split(",") if isinstance(self.targets, str) else self.targets
        if not isinstance(targets, (list, tuple)):
            raise DpbenchError(f"lora targets must be a list of module names, got {self.targets!r}")
        targets = tuple(str(t).strip() for t in targets if str(t).strip())
        if not targets:
            raise DpbenchError(f"lora targets must name at least one module, e.g. {EXAMPLE}")
        bad = [t for t in targets if not _TARGET.fullmatch(t)]
        if bad:
            raise DpbenchError(f"lora target {bad[0]!r} is not a module name (letters, digits, _ and dots)")
        if not (isinstance(self.r, int) and not isinstance(self.r, bool) and 1 <= self.r < COUNT_LIMIT):
            raise DpbenchError(f"lora r must be an integer >= 1 (below 2**31), got {self.r!r}")
        if not (_number(self.alpha) and finite(self.alpha) and self.alpha > 0):
            raise DpbenchError(f"lora alpha must be a positive number, got {self.alpha!r}")
        if not (_number(self.dropout) and 0 <= self.dropout < 1):
            raise DpbenchError(f"lora dropout must lie in [0, 1), got {self.dropout!r}")
        # one canonical form: alpha 16 and 16.0 must serialise, and so hash, alike
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "dropout", float(self.dropout))
        object.__setattr__(self, "targets", targets)

    @classmethod
    def parse(cls, text: str) -> LoraSpec:
        """`r=8,alpha=16,targets=q_proj,v_proj`: a segment without `=` continues the previous key's list."""
        values: dict[str, list[str]] = {}
        key = None
        for segment in (s.strip() for s in text.split(",")):
            name, sep, value = segment.partition("=")
            if sep:
                key = name.strip()
                if key not in KEYS:
                    raise DpbenchError(f"--lora: unknown key {key!r}; keys are {', '.join(KEYS)} (e.g. {EXAMPLE})")
                if key in values:
                    raise DpbenchError(f"--lora: {key} given twice in {text!r}")
                values[key] = [value.strip()]
            elif not segment:
                continue
            elif key != "targets":
                raise DpbenchError(
                    f"--lora takes KEY=VALUE pairs (only targets takes a list), e.g. {EXAMPLE}; got {text!r}"
                )
            else:
                values[key].append(segment)
        if "r" not in values or "alpha" not in values:
            raise DpbenchError(f"--lora needs r and alpha, e.g. {EXAMPLE}; got {text!r}")
        try:
            fields: dict[str, Any] = {"r": int(values["r"][0]), "alpha": float(values["alpha"][0])}
            if "dropout" in values:
                fields["dropout"] = float(values["dropout"][0])
        except ValueError:
            raise DpbenchError(f"--lora: r must be an integer, alpha and dropout numbers; got {text!r}") from None
        if "targets" in values:
            fields["targets"] = tuple(values["targets"])
        return cls(**fields)

    @classmethod
    def from_value(cls, value: Any) -> LoraSpec | None:
        """A run spec's `lora` field: null, a mapping (YAML/JSON), or the CLI string."""
        if value is None or isinstance(value, LoraSpec):
            return value
        if isinstance(value, str):
            return None if value.strip().lower() in ("", "none", "off") else cls.parse(value)
        if isinstance(value, dict):
            try:
                return cls(**value)
            except TypeError as e:
                raise DpbenchError(f"bad lora spec {value!r}: {e}") from None
        raise DpbenchError(f"lora must be null, a mapping or a string like {EXAMPLE!r}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets)}


def _language_model_modules(model: VisionLanguageModel) -> dict[str, Any]:
    """Full name -> module, for the modules of the `language_model` parameter group."""
    prefixes = tuple(model.PARAMETER_GROUPS["language_model"])
    return {name: m for name, m in model.model.named_modules() if name and (name + ".").startswith(prefixes)}


def inject_lora(model: VisionLanguageModel, lora: LoraSpec, *, seed: int) -> list[str]:
    """Add adapters to the language model's target Linears, in place; return their module names.

    B starts at zero (peft's default), so the model's outputs are unchanged until it trains.
    A's random init draws from a generator seeded by `seed`, not the global one: same spec,
    same adapters."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer
    from torch import nn

    if any(isinstance(m, LoraLayer) for m in model.model.modules()):
        raise DpbenchError("the model already has LoRA adapters")
    modules = _language_model_modules(model)
    chosen = []
    for target in lora.targets:
        hits = [name for name in modules if name == target or name.endswith("." + target)]
        if not hits:
            linears = sorted({name.rpartition(".")[2] for name, m in modules.items() if isinstance(m, nn.Linear)})
            raise DpbenchError(
                f"LoRA target {target!r} matches no module of the language model; "
                f"its Linear layers are named {', '.join(linears[:8]) or '(none)'}"
            )
        other = [name for name in hits if not isinstance(modules[name], nn.Linear)]
        if other:  # peft could adapt an Embedding, but Opacus has no per-sample rule for its adapter
            raise DpbenchError(
                f"LoRA target {target!r} matches {other[0]} ({type(modules[other[0]]).__name__}); "
                f"only Linear layers can be adapted"
            )
        chosen += [name for name in hits if name not in chosen]
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        bias="none",
        # a string is full-matched against each module's full name: exactly the modules chosen
        # here, where a list would match suffixes anywhere, the vision tower included
        target_modules="|".join(re.escape(name) for name in chosen),
    )
    with torch.random.fork_rng(devices=[]):  # A is initialised on the CPU, then moved
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model.model)
    return chosen


def is_adapter_parameter(name: str) -> bool:
    return bool(_ADAPTER_PARAM.search(name))


def set_trainable(model: VisionLanguageModel, groups: Iterable[str], lora: LoraSpec | None) -> list[str]:
    """`--trainable` groups, with LoRA's rule: "language_model" then trains the LM's adapters
    only, and every base weight of it (lm_head included) stays frozen; the other groups train
    in full as without LoRA. Returns the trainable parameters' names."""
    names = model.set_trainable(list(groups))
    if lora is None:
        return names
    lm_prefixes = tuple(model.PARAMETER_GROUPS["language_model"])
    names = []
    for name, param in model.model.named_parameters():
        if name.startswith(lm_prefixes):
            param.requires_grad_(param.requires_grad and is_adapter_parameter(name))
        if param.requires_grad:
            names.append(name)
    if not any(is_adapter_parameter(n) for n in names):
        raise DpbenchError(
            "LoRA is on but no adapter is trainable: inject it first and keep language_model in --trainable"
        )
    return names


def setup_parameters(model: VisionLanguageModel, spec: RunSpec) -> list[str]:
    """What every freshly loaded model of a run goes through before `Method.prepare`: the
    spec's adapters, if any, then its trainable groups. Returns the trainable parameters' names."""
    if spec.lora is not None:
        inject_lora(model, spec.lora, seed=spec.training.seed)
    return set_trainable(model, spec.training.trainable.split(","), spec.lora)


def merge_lora(model: VisionLanguageModel) -> int:
    """Fold each adapter into its base weight (W += alpha/r · B A) and put the plain Linear back,
    in place; return how many layers were merged. The model is then the architecture it was
    loaded as, so `save_pretrained` writes a checkpoint any HF loader reads; its outputs are
    the adapted model's up to float rounding."""
    import torch
    from peft.tuners.lora import LoraLayer

    root = model.model
    layers = [(name, m) for name, m in root.named_modules() if isinstance(m, LoraLayer)]
    with torch.no_grad():
        for name, layer in layers:
            layer.merge()
            parent, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(root, "peft_config"):  # injection's bookkeeping; nothing adapted is left
        del root.peft_config
    return len(layers)

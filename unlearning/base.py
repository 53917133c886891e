"""The unlearning-method interface: change a fine-tuned model so that it forgets a forget set.

A method is one file that registers a subclass of `Unlearner` under its name::

    @UNLEARNERS.register("ga")
    class GradientAscent(Unlearner): ...

and one import in `dpbench/unlearning/methods.py`. `dpbench unlearn` gives it a `Context`: the
parent's model (its weights and trainable groups), a frozen copy when it asks for one, the
forget and retain sets and the recipe; it returns the unlearned model.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from dpbench.checks import finite
from dpbench.errors import DpbenchError
from dpbench.registry import UNLEARNERS

if TYPE_CHECKING:
    import torch

    from dpbench.examples import Example
    from dpbench.models.base import VisionLanguageModel
    from dpbench.spec import RunSpec
    from dpbench.unlearning.requests import ForgetSet
    from dpbench.unlearning.spec import UnlearnSpec

__all__ = ["UNLEARNERS", "Context", "Unlearner", "descend"]


@dataclass
class Context:
    model: VisionLanguageModel  # the parent's weights, trainable as the parent's were; changed in place
    original: VisionLanguageModel | None  # a frozen copy of the parent (`Unlearner.needs_original`)
    forget_set: ForgetSet
    spec: UnlearnSpec
    parent_spec: RunSpec
    parent_fit: list[Example]  # everything the parent trained on
    delta: float  # the parent's δ
    details: dict[str, Any] = field(default_factory=dict)  # what the method reports (in the result)
    losses: list[float] = field(default_factory=list)

    @property
    def forget(self) -> list[Example]:
        return self.forget_set.forget

    @property
    def retain(self) -> list[Example]:
        return self.forget_set.retain


class Unlearner(ABC):
    name: str  # set by the registry decorator
    options: dict[str, Any] = {}  # option name -> default; unknown options are an error
    # Adam's, for the gradient methods: chosen on concept:5 (benchmarks/README.md, "Unlearning")
    default_lr: float | None = 1e-4
    needs_original = False  # gets a frozen copy of the parent (KL, NPO's reference)
    control = False  # a control of the audit, not an unlearning method (noop)
    gradient_recipe = True  # reads the spec's steps, batch size and learning rate (retrain and noop do not)

    def __init__(self, **options: Any):
        unknown = set(options) - set(self.options)
        if unknown:
            known = ", ".join(self.options) or "none"
            raise DpbenchError(
                f"unlearning method {self.name!r} has no option(s) {', '.join(sorted(unknown))}; known: {known}"
            )
        self.opts = {**self.options, **options}
        for key, default in self.options.items():  # values arrive untyped (`--option kl_weight=abc`)
            if isinstance(default, float) and not finite(self.opts[key]):
                raise DpbenchError(f"{self.name}'s {key} must be a finite number, got {self.opts[key]!r}")
            if isinstance(default, str) and not isinstance(self.opts[key], str):
                raise DpbenchError(f"{self.name}'s {key} must be text, got {self.opts[key]!r}")

    @abstractmethod
    def unlearn(self, ctx: Context) -> VisionLanguageModel:
        """The unlearned model: `ctx.model` changed in place, or a new one."""


def descend(
    ctx: Context, loss: Callable[[list[Example], list[Example]], torch.Tensor], label: str
) -> VisionLanguageModel:
    """The gradient methods' loop: `spec.steps` Adam steps on `loss(forget batch, retain batch)`,
    each batch drawn with the unlearning seed; the loss curve goes to `ctx.losses`."""
    import torch

    from dpbench.training_loop import TrainingLoop, trainable_parameters

    model, spec = ctx.model, ctx.spec
    params = trainable_parameters(model.model)
    if not params:
        raise DpbenchError("the parent model has no trainable parameters to unlearn with")
    optimizer = torch.optim.Adam(params, lr=spec.lr)
    loop = TrainingLoop(spec.seed)
    rng = random.Random(spec.seed)
    model.model.train()
    # the parent's precision, as retrain trains at it: the two compare at equal arithmetic
    with model.training_precision(ctx.parent_spec.training.precision), loop.running(label, spec.steps):
        for _ in range(spec.steps):
            optimizer.zero_grad(set_to_none=True)
            forget = rng.sample(ctx.forget, min(spec.batch_size, len(ctx.forget)))
            retain = rng.sample(ctx.retain, min(spec.batch_size, len(ctx.retain)))
            value = loss(forget, retain)
            value.backward()
            optimizer.step()
            loop.end_step(value.item())
    model.model.eval()
    ctx.losses = loop.losses
    return model

"""The audit's control: the parent returned unchanged. It must read as not unlearned."""

from __future__ import annotations

from dpbench.unlearning.base import UNLEARNERS, Unlearner


@UNLEARNERS.register("noop")
class NoOp(Unlearner):
    """Control: the parent, unchanged (an audit that passes it is broken)."""

    default_lr = None
    gradient_recipe = False
    control = True

    def unlearn(self, ctx):
        return ctx.model

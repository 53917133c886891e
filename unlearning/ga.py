"""Gradient ascent on the forget set (Thudi et al. 2022; the baseline of SIU and MLLMU-Bench)."""

from __future__ import annotations

from dpbench.unlearning.base import UNLEARNERS, Unlearner, descend
from dpbench.unlearning.losses import nll


@UNLEARNERS.register("ga")
class GradientAscent(Unlearner):
    """Maximise the forget set's loss; nothing holds the rest of the model in place."""

    def unlearn(self, ctx):
        return descend(ctx, lambda forget, retain: -nll(ctx.model, forget).mean(), self.name)

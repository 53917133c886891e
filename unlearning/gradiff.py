"""Gradient difference: ascent on the forget set, descent on the retain set (Liu et al. 2022)."""

from __future__ import annotations

from dpbench.unlearning.base import UNLEARNERS, Unlearner, descend
from dpbench.unlearning.losses import nll


@UNLEARNERS.register("gradiff")
class GradDiff(Unlearner):
    """-loss(forget) + retain_weight · loss(retain)."""

    options = {"retain_weight": 1.0}

    def unlearn(self, ctx):
        w, m = self.opts["retain_weight"], ctx.model
        return descend(ctx, lambda forget, retain: -nll(m, forget).mean() + w * nll(m, retain).mean(), self.name)

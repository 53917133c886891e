"""Negative preference optimisation (Zhang et al. 2024) with a retain term, as MLLMU-Bench and
open-unlearning run it: the forget answers treated as dispreferred against the parent."""

from __future__ import annotations

from dpbench.errors import DpbenchError
from dpbench.unlearning.base import UNLEARNERS, Unlearner, descend
from dpbench.unlearning.losses import nll, npo


@UNLEARNERS.register("npo")
class NPO(Unlearner):
    """NPO(forget; β) + retain_weight · loss(retain)."""

    options = {"beta": 0.1, "retain_weight": 1.0}
    needs_original = True

    def __init__(self, **options):
        super().__init__(**options)
        if self.opts["beta"] <= 0:  # the base class checked it is a finite number
            raise DpbenchError(f"npo's beta must be positive, got {self.opts['beta']!r}")

    def unlearn(self, ctx):
        beta, w, m, o = self.opts["beta"], self.opts["retain_weight"], ctx.model, ctx.original
        return descend(ctx, lambda forget, retain: npo(m, o, forget, beta) + w * nll(m, retain).mean(), self.name)

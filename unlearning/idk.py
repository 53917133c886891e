"""Preference for a refusal: the forget set's prompts answered "I don't know" (TOFU's IDK, SIU's
PO baseline), with the retain set's own answers kept."""

from __future__ import annotations

from dpbench.unlearning.base import UNLEARNERS, Unlearner, descend
from dpbench.unlearning.losses import nll


@UNLEARNERS.register("idk")
class IDontKnow(Unlearner):
    """loss(forget prompts → refusal) + loss(retain)."""

    options = {"refusal": "I don't know."}

    def unlearn(self, ctx):
        m, refusal = ctx.model, self.opts["refusal"]

        def loss(forget, retain):
            return nll(m, forget, [refusal] * len(forget)).mean() + nll(m, retain).mean()

        return descend(ctx, loss, self.name)

"""Gradient ascent with a KL anchor: ascent on the forget set while the retain set's next-token
distributions stay close to the parent's (the GA+KL baseline of SIU, TOFU's KL)."""

from __future__ import annotations

from dpbench.unlearning.base import UNLEARNERS, Unlearner, descend
from dpbench.unlearning.losses import masked_kl, nll


@UNLEARNERS.register("kl")
class KLAnchored(Unlearner):
    """-loss(forget) + kl_weight · KL(parent ‖ model) on the retain set."""

    options = {"kl_weight": 1.0}
    needs_original = True

    def unlearn(self, ctx):
        w, m, o = self.opts["kl_weight"], ctx.model, ctx.original

        def loss(forget, retain):
            return -nll(m, forget).mean() + w * masked_kl(m, o, retain, [e.target for e in retain])

        return descend(ctx, loss, self.name)

"""Fine-tune on the retain set only: forgetting by interference (catastrophic forgetting)."""

from __future__ import annotations

from dpbench.unlearning.base import UNLEARNERS, Unlearner, descend
from dpbench.unlearning.losses import nll


@UNLEARNERS.register("finetune")
class FineTune(Unlearner):
    """Continue training on the retain set; the forget set is never read."""

    def unlearn(self, ctx):
        return descend(ctx, lambda forget, retain: nll(ctx.model, retain).mean(), self.name)

"""The gold standard: retraining from the base model without the forget set.

The parent's own recipe (method, privacy, steps, seed, LoRA, token pruning) on everything the
parent trained on except the forget set. Exact unlearning by construction, and what every other
method is measured against (`dpbench.unlearning.metrics`'s distance to retrain).
"""

from __future__ import annotations

from dpbench.unlearning.base import UNLEARNERS, Unlearner


@UNLEARNERS.register("retrain")
class Retrain(Unlearner):
    """The parent's training recipe on its training set minus the forget set, from the same base."""

    default_lr = None  # the parent's
    gradient_recipe = False

    def unlearn(self, ctx):
        from dpbench import phases

        spec = ctx.parent_spec.replace(**{"audit.gradient_canaries": 0})  # the audit block never changes training
        gone = {e.uid for e in ctx.forget}
        data = [e for e in ctx.parent_fit if e.uid not in gone]
        model, report = phases.train_from_base(spec, data, ctx.delta)
        ctx.losses = report.losses
        ctx.details.update(
            recipe=f"{spec.method}, {report.steps} steps, the parent's seed",
            n_train=len(data),
            epochs=report.epochs,
            epsilon=report.privacy.to_dict().get("epsilon"),
        )
        return model

"""Non-private fine-tuning: the utility ceiling every DP method is compared with."""

from __future__ import annotations

import torch

from dpbench.attacks.gradient_canaries import GradientCanaries, audit_block, deferred_section
from dpbench.distributed import World, world
from dpbench.memory_breakdown import note_saved_activations
from dpbench.methods.base import METHODS, Method, TrainReport
from dpbench.privacy import PrivacyReport, default_delta
from dpbench.training_loop import TrainingLoop, adam, chunks, shuffled_batches, trainable_parameters


@METHODS.register("nonprivate")
class NonPrivate(Method):
    """Adam on the mean loss, no privacy: the utility ceiling (the audit still runs)."""

    private = False
    # without clipping and noise Adam's best step is smaller (README, "Learning rates and dualpriv's defaults")
    default_lr = 1.25e-4
    audit_block = True

    def train(self, model, data, spec, delta) -> TrainReport:
        t = spec.training
        delta = delta if delta is not None else default_delta(len(data))  # the audit's bounds need one
        loop = TrainingLoop(t.seed)
        params = trainable_parameters(model.model)
        a = spec.audit
        audit = audit_block(a.gradient_canaries, model.device) if a.canary_placement == "audit-block" else []
        optimizer = adam([{"params": params}, *({"params": [p]} for p in audit)], spec)
        batch_size = min(t.batch_size, len(data))
        canaries = None
        if a.gradient_canaries:  # the no-noise control of the white-box audit
            rate, clip = batch_size / len(data), spec.privacy.max_grad_norm
            canaries = GradientCanaries(
                a.gradient_canaries, t.seed, rate, clip, 0.0, audit or params, a.canary_placement
            )
        batches = shuffled_batches(len(data), batch_size, t.seed)  # the same batches on every rank
        w = world()
        model.model.train()
        with loop.running("training (non-private)", t.steps):
            for _ in range(t.steps):
                optimizer.zero_grad(set_to_none=True)
                idx = next(batches)
                total = 0.0
                for part in chunks(w.shard(idx), t.physical_batch_size):  # accumulate: bounded memory
                    batch = model.encode([data[i] for i in part], [data[i].target for i in part])
                    with note_saved_activations():  # the memory breakdown's: what the forward saves for backward
                        loss = model.per_example_loss(batch).sum() / len(idx)
                    loss.backward()
                    total += loss.item()
                    loop.count(batch)
                if w.distributed:
                    total = sum_gradients(params, w, total)
                if canaries is not None:
                    enter_canaries(canaries, canaries.params, len(idx))
                optimizer.step()
                loop.end_step(total)
        model.model.eval()
        return TrainReport(
            steps=t.steps,
            epochs=t.steps * batch_size / len(data),
            losses=loop.losses,
            privacy=PrivacyReport.non_private(t.steps),
            samples=loop.samples,
            tokens=loop.tokens,
            whitebox_audit=deferred_section(canaries, delta, None, ROUTE) if canaries is not None else None,
        )


def sum_gradients(params, w: World, loss: float) -> float:
    """The ranks' gradients summed, as DistributedDataParallel's all-reduce would (each rank's
    loss is its share of the batch's mean), once after the accumulation, so ranks may hold unequal
    shards; returns the batch's loss."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        w.sum_(p.grad)
    return w.sum_floats(loss)[0]


ROUTE = "added to the mean gradient as a gradient of norm C over the batch, no clipping and no noise"


def enter_canaries(canaries: GradientCanaries, params, batch: int) -> None:
    """The step's sampled canaries join the mean gradient (each a gradient of norm C); the
    auditor sees the gradient the optimiser gets, less the real examples' part."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    canaries.remember_known(canaries.gather(grads, scale=batch))
    canaries.add_to(grads, canaries.draw(), canaries.clip / batch)
    canaries.observe(canaries.gather(grads, scale=batch))

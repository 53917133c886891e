"""Non-private fine-tuning: the utility ceiling every DP method is compared with."""

from __future__ import annotations

from dpbench.methods.base import METHODS, Method, TrainReport
from dpbench.privacy import PrivacyReport
from dpbench.training_loop import TrainingLoop, adam, chunks, shuffled_batches, trainable_parameters


@METHODS.register("nonprivate")
class NonPrivate(Method):
    """Adam on the mean loss, no privacy: the utility ceiling (the audit still runs)."""

    private = False
    # without clipping and noise Adam's best step is smaller (README, "Learning rates and dualpriv's defaults")
    default_lr = 1.25e-4

    def train(self, model, data, spec, delta) -> TrainReport:
        t = spec.training
        loop = TrainingLoop(t.seed)
        optimizer = adam(trainable_parameters(model.model), spec)
        batch_size = min(t.batch_size, len(data))
        batches = shuffled_batches(len(data), batch_size, t.seed)
        model.model.train()
        with loop.running("training (non-private)", t.steps):
            for _ in range(t.steps):
                optimizer.zero_grad(set_to_none=True)
                idx = next(batches)
                total = 0.0
                for part in chunks(idx, t.physical_batch_size):  # accumulate: bounded memory
                    batch = model.encode([data[i] for i in part], [data[i].target for i in part])
                    loss = model.per_example_loss(batch).sum() / len(idx)
                    loss.backward()
                    total += loss.item()
                    loop.count(batch)
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
        )

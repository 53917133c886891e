"""Non-private fine-tuning: the utility ceiling every DP method is compared with."""

from __future__ import annotations

import torch

from dpbench.methods.base import METHODS, Method, TrainReport
from dpbench.methods.loop import chunks, count_tokens, make_optimizer, shuffled_batches, trainable_parameters
from dpbench.privacy import PrivacyReport
from dpbench.progress import progress


@METHODS.register("nonprivate")
class NonPrivate(Method):
    """Adam on the mean loss, no privacy: the utility ceiling (the audit still runs)."""

    private = False
    # without clipping and noise Adam's best step is smaller (README, "Learning rates and dualpriv's defaults")
    default_lr = 1.25e-4

    def train(self, model, data, spec, delta) -> TrainReport:
        t = spec.training
        torch.manual_seed(t.seed)
        optimizer = make_optimizer(trainable_parameters(model.model), spec)
        batch_size = min(t.batch_size, len(data))
        batches = shuffled_batches(len(data), batch_size, t.seed)
        losses, samples, tokens = [], 0, 0
        model.model.train()
        with progress() as bar:
            task = bar.add_task("training (non-private)", total=t.steps)
            for step in range(t.steps):
                optimizer.zero_grad(set_to_none=True)
                idx = next(batches)
                total = 0.0
                for part in chunks(idx, t.physical_batch_size):  # accumulate: bounded memory
                    batch = model.encode([data[i] for i in part], [data[i].target for i in part])
                    loss = model.per_example_loss(batch).sum() / len(idx)
                    loss.backward()
                    total += loss.item()
                    samples += len(part)
                    tokens += count_tokens(batch)
                optimizer.step()
                losses.append(total)
                bar.update(task, advance=1, description=f"training (non-private) loss {total:.3f}")
        model.model.eval()
        return TrainReport(
            steps=t.steps,
            epochs=t.steps * batch_size / len(data),
            losses=losses,
            privacy=PrivacyReport.non_private(t.steps),
            samples=samples,
            tokens=tokens,
        )

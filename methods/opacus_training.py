"""DP-SGD training through Opacus, shared by `dpsgd` and `dualpriv`.

Opacus does the DP work: per-sample gradients, per-example clipping, Gaussian noise, Poisson
sampling and accounting. Logical batches (Poisson, expected size `batch_size`) are split
into physical batches by Opacus' BatchMemoryManager, so memory is bounded whatever the draw.

Two ways to clip (`clipping`), the same DP gradient up to float error:
  per-sample  Opacus' hooks mode: every trainable tensor's per-example gradient is
              materialised (B copies of the parameters), clipped and summed.
  ghost       Opacus' ghost clipping: per-example gradient *norms* are computed from
              activations and backprops (Linear, Embedding; small layers such as RMSNorm
              through their per-sample rule), then a second backward of the loss weighted by
              each example's clipping factor gives the clipped sum directly. Twice the
              backward work, but no per-example gradients in memory.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from opacus import PrivacyEngine
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch.utils.data import DataLoader

from dpbench.errors import DpbenchError
from dpbench.methods import grad_samplers  # noqa: F401  (registers the RMSNorm rules)
from dpbench.methods.base import TrainReport
from dpbench.methods.loop import IndexDataset, count_tokens, make_optimizer, trainable_parameters
from dpbench.privacy import PrivacyReport, calibrate_noise
from dpbench.progress import progress

# Called with the trainable parameters once their .grad holds the noisy, scaled DP gradient
# and before the optimiser consumes it: anything here is post-processing of a DP release.
PostNoiseHook = Callable[[list[torch.nn.Parameter]], None]

# our option value -> Opacus' grad_sample_mode
CLIPPING_MODES = {"per-sample": "hooks", "ghost": "ghost"}


def check_clipping(mode: str) -> str:
    if mode not in CLIPPING_MODES:
        raise DpbenchError(f"clipping must be one of {', '.join(CLIPPING_MODES)}, got {mode!r}")
    return mode


class PerExampleLoss:
    """The criterion Opacus' ghost clipping wraps. Our model already returns one loss per
    example, so this only reduces: Opacus sets `reduction = "none"` to get the vector, keeps it
    for its second (clipping-weighted) backward, and reduces by the mean itself."""

    reduction = "mean"

    def __call__(self, per_example: torch.Tensor) -> torch.Tensor:
        return per_example if self.reduction == "none" else per_example.mean()


def opacus_sample_rate(n: int, batch_size: int) -> float:
    """The Poisson rate Opacus' loader samples, and its accountant accounts, at: 1/len(loader)
    = 1/⌈n/B⌉, a little under B/n unless B divides n. σ is calibrated at this rate, so the
    spent ε meets the target; the expected batch is n/⌈n/B⌉."""
    return 1 / math.ceil(n / batch_size)


def dp_sgd_noise_multiplier(spec, delta: float, n: int) -> float:
    """σ for the spec's target ε over its planned steps, at the rate Opacus samples n examples at."""
    t, p = spec.training, spec.privacy
    return calibrate_noise(target_epsilon=p.epsilon, delta=delta, sample_rate=opacus_sample_rate(n, t.batch_size),
                           steps=t.steps, accountant=p.accountant)


def train_dp_sgd(model, data, spec, delta, *, label: str, post_noise_hook: PostNoiseHook | None = None,
                 secure_rng: bool = False, clipping: str = "per-sample") -> TrainReport:
    t, p = spec.training, spec.privacy
    check_clipping(clipping)
    model.check_per_example_gradients()  # before anything is spent: some towers mix examples
    torch.manual_seed(t.seed)
    sample_rate = opacus_sample_rate(len(data), t.batch_size)
    sigma = dp_sgd_noise_multiplier(spec, delta, len(data))
    params = trainable_parameters(model.model)
    model.model.train()  # Opacus validates in training mode, and its hooks skip eval mode
    engine = PrivacyEngine(accountant=p.accountant, secure_mode=secure_rng)
    private = engine.make_private(
        module=model.model,
        optimizer=make_optimizer(params, spec),
        criterion=PerExampleLoss(),
        data_loader=DataLoader(IndexDataset(len(data)), batch_size=t.batch_size),
        noise_multiplier=sigma,
        max_grad_norm=p.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=CLIPPING_MODES[clipping],
    )
    if clipping == "ghost":  # Opacus returns the wrapped criterion only in ghost mode
        module, optimizer, criterion, loader = private
    else:
        (module, optimizer, loader), criterion = private, PerExampleLoss()
    if loader.sample_rate != sample_rate:  # Opacus changed how it sets the rate: σ would be off
        raise DpbenchError(f"Opacus samples at {loader.sample_rate}, σ was calibrated at {sample_rate}")
    module.train()
    losses, samples, tokens, step, running = [], 0, 0, 0, 0.0
    with progress() as bar, BatchMemoryManager(
        data_loader=loader, max_physical_batch_size=t.physical_batch_size, optimizer=optimizer
    ) as physical_batches:
        task = bar.add_task(f"training ({label}, σ={sigma:.3f})", total=t.steps)
        while step < t.steps:
            for (idx,) in physical_batches:
                idx = idx.tolist()
                if idx:
                    batch = model.encode([data[i] for i in idx], [data[i].target for i in idx])
                    per_example = model.per_example_loss(batch, model=module)
                    criterion(per_example).backward()  # ghost: both backward passes
                    running += per_example.detach().sum().item()
                    samples += len(idx)
                    tokens += count_tokens(batch)
                else:  # an empty Poisson draw still releases noise: give Opacus an empty batch's
                    for q in params:  # per-sample gradients (per-sample mode) and gradient (ghost)
                        q.grad_sample = torch.zeros((0, *q.shape), device=q.device, dtype=q.dtype)
                        q.grad = torch.zeros_like(q)
                if optimizer.pre_step():  # clip + accumulate; at a logical batch's end, noise
                    if post_noise_hook is not None:
                        post_noise_hook(params)
                    optimizer.original_optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(running / max(1.0, t.batch_size))
                    running, step = 0.0, step + 1
                    bar.update(task, advance=1, description=f"training ({label}, σ={sigma:.3f}) loss {losses[-1]:.3f}")
                    if step == t.steps:
                        break
                else:
                    optimizer.zero_grad(set_to_none=True)  # keeps summed_grad across physical batches
    module.remove_hooks()
    module.eval()
    epsilon = engine.accountant.get_epsilon(delta=delta)
    privacy = PrivacyReport(
        private=True,
        epsilon=float(epsilon),
        target_epsilon=p.epsilon,
        delta=delta,
        noise_multiplier=sigma,
        sample_rate=loader.sample_rate,
        steps=step,
        accountant=p.accountant,
        max_grad_norm=p.max_grad_norm,
        notes=(
            ("noise from a cryptographically secure generator",)
            if secure_rng
            else ("noise from torch's generator seeded by the spec's seed: reproducible, not for deployment",)
        ),
    )
    return TrainReport(
        steps=step, epochs=step * sample_rate, losses=losses, privacy=privacy, samples=samples, tokens=tokens,
        details={"clipping": clipping},
    )

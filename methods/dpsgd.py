"""DP-SGD (Abadi et al. 2016) through Opacus, in one place: the `dpsgd` method and the training
that `dualpriv` and its ablations share.

Opacus does the DP work: per-sample gradients, per-example clipping, Gaussian noise, Poisson
sampling and accounting. Logical batches (Poisson, expected size `batch_size`) are split
into physical batches by Opacus' BatchMemoryManager, so memory is bounded whatever the draw.
σ is calibrated (`dpbench.privacy.calibrate_noise`) at the rate Opacus' loader samples at.

Two ways to clip (`clipping`), the same DP gradient up to float error:
  per-sample  Opacus' hooks mode: every trainable tensor's per-example gradient is
              materialised (B copies of the parameters), clipped and summed.
  ghost       Opacus' ghost clipping: per-example gradient *norms* are computed from
              activations and backprops (Linear, Embedding; small layers such as RMSNorm
              through their per-sample rule), then a second backward of the loss weighted by
              each example's clipping factor gives the clipped sum directly. Twice the
              backward work, but no per-example gradients in memory.

A post-noise hook sees the noisy gradient before the optimiser consumes it (update pruning).

Across processes (`training.nproc`, dpbench.distributed) the model is wrapped in Opacus' DPDDP,
so make_private picks Opacus' distributed optimizer: each rank Poisson-samples its shard of the
data at the run's rate, clips its examples, rank 0 alone adds the noise, and the sums are
all-reduced before the post-noise hook, so every rank prunes and steps on the same gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import wrap_collate_with_empty
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler
from torch.utils.data import DataLoader, Dataset, default_collate

from dpbench.attacks.gradient_canaries import RAW_SCALE, GradientCanaries, audit_block, deferred_section
from dpbench.distributed import World, world
from dpbench.errors import DpbenchError
from dpbench.memory_breakdown import note_per_example, note_saved_activations
from dpbench.methods import grad_samplers  # noqa: F401  (registers the RMSNorm rules)
from dpbench.methods.base import METHODS, Method, TrainReport
from dpbench.output import note
from dpbench.privacy import SEEDED_NOISE, PrivacyReport, accountant_epsilon, calibrate_noise, rdp_beside
from dpbench.secure_noise import GENERATOR, OS_RANDOM, poisson_mask, secure_loader, use_secure_noise
from dpbench.training_loop import TrainingLoop, adam, trainable_parameters

# Called with the trainable parameters once their .grad holds the noisy, scaled DP gradient
# and before the optimiser consumes it: anything here is post-processing of a DP release.
# Its second argument is the audit-only block (empty without one). A hook with a
# `step(optimizer)` method takes the optimiser step too (`optimizer_step`).
PostNoiseHook = Callable[[list[torch.nn.Parameter], list[torch.nn.Parameter]], None]

NOT_SECURE = ("noise from torch's generator seeded by the spec's seed: reproducible, not for deployment",)
# how a white-box gradient canary enters the step, per clipping mode (recorded in the result)
CANARY_ROUTES = {
    "per-sample": "one more per-example gradient (norm RAW_SCALE*C) through Opacus' clipping, noise and "
    "the post-noise hook",
    "ghost": "added to Opacus' ghost-clipped sum at norm C (no per-example gradient to clip), then noise "
    "and the post-noise hook",
    "audit-block per-sample": "one more per-example gradient (norm RAW_SCALE*C) on an audit-only parameter block "
    "no forward reads, through Opacus' clipping, noise (a generator of its own), Adam and the post-noise hook",
    "audit-block ghost": "added at norm C to the ghost-clipped sum of an audit-only parameter block no forward "
    "reads, then Opacus' noise (a generator of its own), Adam and the post-noise hook",
}


def canary_route(spec, clipping: str) -> str:
    return f"audit-block {clipping}" if spec.audit.canary_placement == "audit-block" else clipping


# canaries clipped per call of Opacus' clip_and_accumulate: each is a full-size per-example
# gradient, so a few at a time keep the audit's memory small beside the real examples'
CANARY_CHUNK = 4
# on the audit block a canary's per-example gradient is one block tensor (AUDIT_BLOCK floats)
AUDIT_CANARY_CHUNK = 256
# our option value -> Opacus' grad_sample_mode
CLIPPING_MODES = {"per-sample": "hooks", "ghost": "ghost"}


def check_clipping(mode: str) -> str:
    if mode not in CLIPPING_MODES:
        raise DpbenchError(f"clipping must be one of {', '.join(CLIPPING_MODES)}, got {mode!r}")
    return mode


def clipping_passes(mode: str) -> tuple[int, int]:
    """(forward, backward) passes per example: ghost clipping's second backward is the weighted loss's."""
    return (1, 2) if mode == "ghost" else (1, 1)


class IndexDataset(Dataset):
    """Indices into the example list: Opacus samples these, the method encodes examples."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor]:
        return (torch.tensor(i),)  # a tuple: Opacus builds empty Poisson batches from item shapes


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
    return calibrate_noise(
        target_epsilon=p.epsilon,
        delta=delta,
        sample_rate=opacus_sample_rate(n, t.batch_size),
        steps=t.steps,
        accountant=p.accountant,
    )


class ShardSampler(DistributedUniformWithReplacementSampler):
    """Opacus' distributed Poisson sampler (rank r samples examples r, r+W, ... at the run's rate)
    with its empty draws kept: Opacus skips them, which would put that rank a step behind the
    others and drop a release the accountant counted."""

    def __iter__(self):
        shard = torch.arange(self.total_size)[self.rank : self.total_size : self.num_replicas]
        for _ in range(self.num_batches):
            mask = poisson_mask(self.num_samples, self.sample_rate, self.generator)  # generator: or OS_RANDOM
            yield shard[mask.nonzero(as_tuple=False).reshape(-1)]


def shard_loader(n: int, rate: float, generator: torch.Generator) -> DataLoader:
    loader = DataLoader(
        IndexDataset(n),
        batch_sampler=ShardSampler(total_size=n, sample_rate=rate, generator=generator),
        collate_fn=wrap_collate_with_empty(
            collate_fn=default_collate, sample_empty_shapes=[(0,)], dtypes=[torch.int64]
        ),
    )
    loader.sample_rate = rate
    return loader


def rank_generator(seed: int, w: World) -> torch.Generator:
    """Each rank's own sampling stream: ranks sharing one would include examples in pairs."""
    state = np.random.SeedSequence([seed, w.rank, 0x5A]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@dataclass
class Private:
    """What Opacus' `make_private` hands back, in one place."""

    engine: PrivacyEngine
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    criterion: Callable
    loader: DataLoader
    params: list[torch.nn.Parameter]
    world: World = World()
    audit: list[torch.nn.Parameter] = field(default_factory=list)  # the canaries' audit-only block

    def release_divisor(self) -> float:
        """What the released gradient was divided by: the expected batch (Opacus' per rank, times
        the ranks after the all-reduce's mean) times the accumulated physical batches."""
        return self.optimizer.expected_batch_size * self.optimizer.accumulated_iterations * self.world.size


def make_private(
    model, n: int, spec, sigma: float, *, clipping: str, secure_rng: bool, audit: list | None = None
) -> Private:
    """Opacus' private module, optimizer and loader; `audit` (an audit-only block, in parameter
    groups of its own after the model's) is clipped, noised and stepped with the rest."""
    t, p = spec.training, spec.privacy
    params = trainable_parameters(model.model)
    audit = audit or []
    model.model.train()  # Opacus validates in training mode, and its hooks skip eval mode
    if not secure_rng:
        note(SEEDED_NOISE)
    w = world()
    # Opacus' secure mode needs torchcsprng (no build for current torch): secure_rng is dpbench.secure_noise's
    engine = PrivacyEngine(accountant=p.accountant, secure_mode=False)
    private = engine.make_private(
        module=DPDDP(model.model) if w.distributed else model.model,  # DPDDP: Opacus' distributed optimizer
        optimizer=adam(params, spec),
        criterion=PerExampleLoss(),
        data_loader=DataLoader(IndexDataset(n), batch_size=t.batch_size),
        noise_multiplier=sigma,
        max_grad_norm=p.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=CLIPPING_MODES[clipping],
    )
    if clipping == "ghost":  # Opacus returns the wrapped criterion only in ghost mode
        module, optimizer, criterion, loader = private
    else:
        (module, optimizer, loader), criterion = private, PerExampleLoss()
    if loader.sample_rate != opacus_sample_rate(n, t.batch_size):  # Opacus changed how it sets the rate
        raise DpbenchError(
            f"Opacus samples at {loader.sample_rate}, σ was calibrated at {opacus_sample_rate(n, t.batch_size)}"
        )
    if w.distributed:
        loader = shard_loader(n, loader.sample_rate, OS_RANDOM if secure_rng else rank_generator(t.seed, w))
    elif secure_rng:
        loader = secure_loader(loader)  # Poisson sampling from os.urandom
    if secure_rng:
        use_secure_noise(optimizer)  # the noise from os.urandom
    if audit:  # after make_private, which takes only the module's own parameters
        for a in audit:
            a.summed_grad = None
            optimizer.original_optimizer.add_param_group({"params": [a]})
        separate_audit_noise(optimizer, len(audit), t.seed, audit[0].device)
    return Private(engine, module, optimizer, criterion, loader, params, w, audit)


def empty_draw(params: list[torch.nn.Parameter]) -> None:
    """An empty Poisson draw still releases noise: give Opacus an empty batch's per-sample
    gradients (per-sample mode) and gradient (ghost)."""
    for q in params:
        q.grad_sample = torch.zeros((0, *q.shape), device=q.device, dtype=q.dtype)
        q.grad = torch.zeros_like(q)


def only_groups(optimizer, groups: slice):
    """Within this context Opacus' optimizer sees only `groups` of its parameter groups (its
    `params` are read from them), so a call clips or noises those alone."""

    class Only:
        def __enter__(self):
            inner = optimizer.original_optimizer
            self.saved = inner.param_groups
            inner.param_groups = self.saved[groups]

        def __exit__(self, *exc):
            optimizer.original_optimizer.param_groups = self.saved

    return Only()


def separate_audit_noise(optimizer, n_audit: int, seed: int, device: torch.device) -> None:
    """The audit block's noise through the optimizer's own `add_noise` (whatever it is: Opacus',
    the secure one, or a fault wrapped around it), but from a generator of its own after the
    model's, so the model's noise, and with it training, is the same with or without the audit."""
    add_noise = optimizer.add_noise
    state = int(np.random.SeedSequence([seed, 0xA0D]).generate_state(1)[0])
    generator = torch.Generator(device=device).manual_seed(state)  # on the block's device, as torch.normal needs

    def add_noise_apart() -> None:
        with only_groups(optimizer, slice(0, -n_audit)):
            add_noise()
        own = optimizer.generator
        if own is None:  # the global stream: the audit draws from its own instead
            optimizer.generator = generator
        try:
            with only_groups(optimizer, slice(-n_audit, None)):
                add_noise()
        finally:
            optimizer.generator = own

    optimizer.add_noise = add_noise_apart


def no_audit_gradient(dp: Private, batch: int, clipping: str) -> None:
    """The audit block's share of a physical batch: real examples never reach it (zero rows)."""
    for a in dp.audit:
        if clipping == "per-sample":
            a.grad_sample = torch.zeros((batch, *a.shape), device=a.device, dtype=a.dtype)
        elif a.grad is None:
            a.grad = torch.zeros_like(a)


def enter_audit_canaries(dp: Private, canaries: GradientCanaries, clipping: str, chunk: int) -> None:
    """This step's sampled canaries on the audit block, at a logical batch's last physical batch:
    per-sample clipping clips each one (norm RAW_SCALE·C) in Opacus' own `clip_and_accumulate`,
    a call per block tensor that sees that tensor alone (a canary's gradient is zero elsewhere,
    so its norm is the same), `chunk` canaries at a time; ghost clipping adds them at norm C."""
    optimizer, active = dp.optimizer, canaries.draw()
    if not dp.world.main:
        active = active[:0]
    if clipping != "per-sample":
        canaries.remember_known(canaries.gather([a.grad for a in dp.audit]))
        canaries.add_to([a.grad for a in dp.audit], active, canaries.clip)
        return
    optimizer.clip_and_accumulate()  # this physical batch's real examples (zero rows on the block)
    # zero by construction; read anyway, so a fault that leaks real gradients into the block shows
    canaries.remember_known(dp.world.sum_array(canaries.gather([a.summed_grad for a in dp.audit])))
    empty = lambda q: torch.zeros((0, *q.shape), device=q.device, dtype=q.dtype)  # noqa: E731
    for q in dp.params:  # clipped: neither the canaries' calls nor pre_step's may add them again
        q.grad_sample = empty(q)
    n_groups = len(optimizer.original_optimizer.param_groups)
    for i, ids in canaries.by_tensor(active).items():
        group = n_groups - len(dp.audit) + i
        for k in range(0, len(ids), chunk):
            (dp.audit[i].grad_sample,) = canaries.rows(ids[k : k + chunk], RAW_SCALE * canaries.clip, only=i)
            with only_groups(optimizer, slice(group, group + 1)):
                optimizer.clip_and_accumulate()
    for q in dp.audit:  # all clipped: pre_step's own clipping has nothing left to add
        q.grad_sample = empty(q)


def enter_canaries(dp: Private, canaries: GradientCanaries, clipping: str, chunk: int) -> None:
    """At a logical batch's last physical batch, before Opacus adds the noise: the auditor
    notes the real examples' clipped sum at the canary coordinates, then this step's sampled
    canaries join the sum. Per-sample clipping: each canary is one more per-example gradient
    (norm RAW_SCALE·C) that Opacus' own `clip_and_accumulate` clips, the last chunk within
    `pre_step`. Ghost clipping has no per-example gradients to clip: a canary enters its
    clipped sum at norm C."""
    optimizer, active = dp.optimizer, canaries.draw()  # every rank draws: their streams stay together
    if not dp.world.main:
        active = active[:0]  # a canary is one example: it enters on rank 0 only
    if clipping == "per-sample":
        optimizer.clip_and_accumulate()  # this physical batch's real examples
        canaries.remember_known(dp.world.sum_array(canaries.gather([q.summed_grad for q in dp.params])))
        parts = [active[i : i + chunk] for i in range(0, len(active), chunk)] or [active]
        for part in parts:
            for q, rows in zip(dp.params, canaries.rows(part, RAW_SCALE * canaries.clip)):
                q.grad_sample = rows
            if part is not parts[-1]:
                optimizer.clip_and_accumulate()
        return
    known = canaries.gather([q.summed_grad for q in dp.params]) + canaries.gather([q.grad for q in dp.params])
    canaries.remember_known(dp.world.sum_array(known))
    canaries.add_to([q.grad for q in dp.params], active, canaries.clip)


def released_sum(dp: Private, canaries: GradientCanaries, hooked: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The step's released noisy gradient at the canary coordinates, as the optimiser gets it
    (after the post-noise hook), times the mean's divisor: the noisy sum; and, when a hook may
    have pruned, the smallest magnitude it kept in each canary's tensor."""
    grads, scale = [q.grad for q in canaries.params], dp.release_divisor()
    return canaries.gather(grads, scale=scale), canaries.pruning_thresholds(grads, scale) if hooked else None


def optimizer_step(hook: PostNoiseHook | None, optimizer: torch.optim.Optimizer) -> None:
    """The step on the released gradient: the hook's own where it has one (update pruning's
    exact freeze steps one parameter at a time), else the optimiser's."""
    step = getattr(hook, "step", None)
    if step is None:
        optimizer.step()
    else:
        step(optimizer)


def dp_steps(
    model,
    data,
    spec,
    dp: Private,
    loop: TrainingLoop,
    post_noise_hook: PostNoiseHook | None,
    canaries: GradientCanaries | None = None,
    clipping: str = "per-sample",
) -> None:
    """`spec.training.steps` noisy steps over Poisson-sampled logical batches, split into physical ones."""
    t, running = spec.training, 0.0
    with BatchMemoryManager(
        data_loader=dp.loader, max_physical_batch_size=t.physical_batch_size, optimizer=dp.optimizer
    ) as physical_batches:
        while loop.steps < t.steps:
            for (idx,) in physical_batches:
                idx = idx.tolist()
                if idx:
                    batch = model.encode([data[i] for i in idx], [data[i].target for i in idx])
                    with note_saved_activations():  # the memory breakdown's: what the forward saves for backward
                        per_example = model.per_example_loss(batch, model=dp.module)
                    dp.criterion(per_example).backward()  # ghost: both backward passes
                    note_per_example(dp.params)  # the memory breakdown's, before clipping or canaries
                    running += per_example.detach().sum().item()
                    loop.count(batch)
                else:
                    empty_draw(dp.params)
                no_audit_gradient(dp, len(idx), clipping)
                # Opacus' own flag (BatchMemoryManager sets it): is this the logical batch's last part?
                if canaries is not None and not dp.optimizer._check_skip_next_step(pop_next=False):
                    if dp.audit:
                        enter_audit_canaries(dp, canaries, clipping, AUDIT_CANARY_CHUNK)
                    else:
                        enter_canaries(dp, canaries, clipping, CANARY_CHUNK)
                if not dp.optimizer.pre_step():  # clip + accumulate; at a logical batch's end, noise
                    dp.optimizer.zero_grad(set_to_none=True)  # keeps summed_grad across physical batches
                    continue
                if dp.world.distributed:
                    dp.optimizer.reduce_gradients()  # Opacus': the ranks' noisy sums, summed, as a mean
                if post_noise_hook is not None:
                    post_noise_hook(dp.params, dp.audit)
                if canaries is not None:
                    canaries.observe(*released_sum(dp, canaries, post_noise_hook is not None))
                optimizer_step(post_noise_hook, dp.optimizer.original_optimizer)
                dp.optimizer.zero_grad(set_to_none=True)
                loop.end_step(dp.world.sum_floats(running)[0] / max(1.0, t.batch_size))
                running = 0.0
                if loop.steps == t.steps:
                    break


def train_dp_sgd(
    model,
    data,
    spec,
    delta,
    *,
    label: str,
    post_noise_hook: PostNoiseHook | None = None,
    secure_rng: bool = False,
    clipping: str = "per-sample",
) -> TrainReport:
    t = spec.training
    check_clipping(clipping)
    model.check_per_example_gradients()  # before anything is spent: some towers mix examples
    loop = TrainingLoop(t.seed)
    sigma = dp_sgd_noise_multiplier(spec, delta, len(data))
    a = spec.audit
    on_block = a.gradient_canaries and a.canary_placement == "audit-block"
    audit = audit_block(a.gradient_canaries, model.device) if on_block else []
    dp = make_private(model, len(data), spec, sigma, clipping=clipping, secure_rng=secure_rng, audit=audit)
    canaries = None
    if a.gradient_canaries:
        rate, clip = dp.loader.sample_rate, spec.privacy.max_grad_norm
        canaries = GradientCanaries(
            a.gradient_canaries, t.seed, rate, clip, sigma, dp.audit or dp.params, a.canary_placement
        )
    dp.module.train()
    with loop.running(f"training ({label}, σ={sigma:.3f})", t.steps):
        dp_steps(model, data, spec, dp, loop, post_noise_hook, canaries, clipping)
    dp.module.remove_hooks()
    dp.module.eval()
    notes = (f"noise and Poisson sampling from {GENERATOR}",) if secure_rng else NOT_SECURE
    accounted_steps = sum(steps for _, _, steps in dp.engine.accountant.history)
    privacy = PrivacyReport.released(
        spec,
        epsilon=accountant_epsilon(dp.engine.accountant, delta),
        epsilon_rdp=rdp_beside(dp.engine.accountant, delta),
        delta=delta,
        noise_multiplier=sigma,
        sample_rate=dp.loader.sample_rate,
        steps=loop.steps,
        notes=notes,
    )
    return TrainReport(
        steps=loop.steps,
        epochs=loop.steps * dp.loader.sample_rate,
        losses=loop.losses,
        privacy=privacy,
        samples=loop.samples,
        tokens=loop.tokens,
        details={"clipping": clipping},
        whitebox_audit=deferred_section(
            canaries,
            delta,
            privacy.epsilon,
            CANARY_ROUTES[canary_route(spec, clipping)],
            accounted_steps=accounted_steps,
        )
        if canaries
        else None,
    )


@METHODS.register("dpsgd")
class DPSGD(Method):
    """DP-SGD through Opacus: per-example clipping, Gaussian noise, Poisson sampling, accounting."""

    options = {"secure_rng": False, "clipping": "per-sample"}  # or "ghost"
    per_example_gradients = True
    audit_block = True

    def __init__(self, **options):
        super().__init__(**options)
        check_clipping(self.opts["clipping"])

    def passes_per_example(self) -> tuple[int, int]:
        return clipping_passes(self.opts["clipping"])

    def train(self, model, data, spec, delta) -> TrainReport:
        return train_dp_sgd(
            model, data, spec, delta, label="DP-SGD", secure_rng=self.opts["secure_rng"], clipping=self.opts["clipping"]
        )

"""What tests/test_distributed.py runs on each of its gloo processes (a module of its own: spawned
processes import the function they run by name, and pytest's importlib mode leaves test modules
unimportable)."""

from __future__ import annotations

import os

import torch

from dpbench import distributed
from dpbench.methods.dpsgd import empty_draw, make_private
from dpbench.methods.dpzo import DPZO
from dpbench.methods.dualpriv import DualPriv
from dpbench.methods.nonprivate import NonPrivate
from dpbench.models.loading import load_model
from dpbench.spec import RunSpec


def rank_main(rank: int, size: int, port: int, job, args, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    w = distributed.init("cpu", size)
    try:
        torch.save(job(w, *args), os.path.join(out, f"{rank}.pt"))
    finally:
        distributed.shutdown()


def private_model(checkpoint, examples, sigma: float, clipping: str):
    model = load_model(str(checkpoint), "cpu")
    model.set_trainable(["projector"])
    spec = RunSpec().replace(**{"training.batch_size": len(examples), "privacy.max_grad_norm": 0.05})
    return model, make_private(model, len(examples), spec, sigma, clipping=clipping, secure_rng=False)


def clipped_sum(w, checkpoint, examples, clipping):
    """The released sum on a fixed batch, each rank holding its share of it, no noise."""
    model, dp = private_model(checkpoint, examples, 0.0, clipping)
    mine = [examples[i] for i in w.shard(list(range(len(examples))))]
    per_example = model.per_example_loss(model.encode(mine, [e.target for e in mine]), model=dp.module)
    dp.criterion(per_example).backward()
    assert dp.optimizer.pre_step()
    if w.distributed:
        dp.optimizer.reduce_gradients()
    return torch.cat([q.grad.reshape(-1) * dp.release_divisor() for q in dp.params])


def released_noise(w, checkpoint, examples, steps):
    """The noise of `steps` releases of an empty draw (no gradient): what the ranks add together."""
    _, dp = private_model(checkpoint, examples, 1.0, "per-sample")
    out = []
    for _ in range(steps):
        empty_draw(dp.params)
        assert dp.optimizer.pre_step()
        if w.distributed:
            dp.optimizer.reduce_gradients()
        out.append(torch.cat([q.grad.reshape(-1) * dp.release_divisor() for q in dp.params]))
        dp.optimizer.zero_grad(set_to_none=True)
    return torch.cat(out)


def trainable(checkpoint):
    model = load_model(str(checkpoint), "cpu")
    model.set_trainable(["projector", "language_model"])
    return model


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.model.parameters() if p.requires_grad])


def trained_parameters(w, checkpoint, examples, method):
    """A few steps of `method`; the trained parameters and the audit scores this rank ended with."""
    model = trainable(checkpoint)
    spec = RunSpec(method=method).replace(
        **{
            "training.steps": 3,
            "training.batch_size": 6,
            "training.physical_batch_size": 2,
            "training.nproc": w.size,
            "audit.gradient_canaries": 50,
        }
    )
    trainer = {"dualpriv": DualPriv, "dpzo": DPZO, "nonprivate": NonPrivate}[method]()
    trainer.prepare(model)
    report = trainer.train(model, examples, spec, 1e-3)
    return flat(model), report.whitebox_scores[1], report.privacy.epsilon, report.losses

"""Training across processes: the world a run trains in, and `--nproc N` launching it.

A run with `training.nproc` = N trains in N processes started by torch's elastic launcher
(what `torchrun --standalone` runs; plain torchrun works too): gloo on the CPU, nccl on CUDA
with one GPU per process. Every rank prepares the same data and model; DP-SGD goes through
Opacus' distributed path (DPDDP and DistributedDPOptimizer: per-rank Poisson sampling of its
shard, noise added once, on rank 0, then summed), dpzo all-reduces the clipped scalars with the
noise added once, and non-private training sums the ranks' gradients as DDP's all-reduce does.
Rank 0 alone evaluates, audits and writes the one result; every rank's peak memory is gathered
into it.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dpbench.errors import DpbenchError
from dpbench.output import LAUNCHED_ENV, verbose


@dataclass(frozen=True)
class World:
    """This process's place among the run's training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's part of a sample drawn identically on every rank."""
        return indices[self.rank :: self.size]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_floats(self, *values: float) -> list[float]:
        """Python floats summed over the ranks (float64, so sums of clipped scalars stay exact enough)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=reduce_device())
        return self.sum_(t).tolist()

    def sum_array(self, values: np.ndarray) -> np.ndarray:
        """A float64 array summed over the ranks."""
        if not self.distributed:
            return values
        return (
            self.sum_(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(reduce_device()))
            .cpu()
            .numpy()
        )

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


_WORLD = World()


def world() -> World:
    """The current run's world (rank 0 of 1 unless `init` joined a process group)."""
    return _WORLD


def reduce_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def launched_size() -> int:
    """WORLD_SIZE as torchrun (or `dpbench run --nproc`) set it; 1 outside a launcher."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DpbenchError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def init(device: str, nproc: int) -> World:
    """Join the launcher's process group (gloo on the CPU, nccl on CUDA, this rank's GPU)."""
    global _WORLD
    size = launched_size()
    if size != nproc:
        raise DpbenchError(
            f"the spec asks for nproc = {nproc} but {size} process(es) were launched (WORLD_SIZE); "
            "give the same number to --nproc and to torchrun"
        )
    if size == 1:
        _WORLD = World()
        return _WORLD
    if not dist.is_initialized():
        if device.startswith("cuda"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" then means this rank's GPU
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    _WORLD = World(dist.get_rank(), dist.get_world_size())
    return _WORLD


def shutdown() -> None:
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()


def check_launch(device: str, nproc: int) -> None:
    """What --nproc needs from this machine, checked before anything starts."""
    if nproc > 1 and device.startswith("cuda") and torch.cuda.device_count() < nproc:
        raise DpbenchError(f"--nproc {nproc} on cuda needs {nproc} GPUs; this machine has {torch.cuda.device_count()}")
    if nproc > 1 and not dist.is_available():
        raise DpbenchError("this torch build has no torch.distributed: --nproc needs it")


def launch(nproc: int, run_args: list[str]) -> int:
    """`dpbench run` on `nproc` ranks of this machine through torch's elastic launcher (what
    `torchrun --standalone` runs), in this process; 0 when every rank finished. A rank's failure
    is its own lines on stderr (rank 0's failure record says more); the launcher's report of it is
    kept out of the output."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the machine's cores shared out between the ranks (torchrun's own default is one thread each)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ[LAUNCHED_ENV] = "1"  # the ranks inherit it: this process holds the run's lock
    if not verbose():
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # dpbench says it in one line
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free local port, as torchrun --standalone
        max_restarts=0,  # a DP run restarted mid-way would spend its budget twice
    )
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "dpbench.cli", "run", *run_args)
    except ChildFailedError as e:
        return max((f.exitcode for f in e.failures.values()), default=1) or 1
    return 0

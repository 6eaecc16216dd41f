"""Data-parallel training through torch.distributed: the process group, the slice of the global
batch each rank trains on, and the launcher behind `ganfast train --nproc N`.

A run launched by torchrun (or `--nproc N`, which starts the same through torch's launcher API)
finds RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR in its environment; `World.from_environment`
joins the group (NCCL on CUDA, gloo on the CPU) and the Trainer then

  - draws every random quantity of a step for the GLOBAL batch (--batch-size), from the same seed on
    every rank, exactly as the one-process run draws it, and keeps its own slice (`World.local`):
    real examples, z, codes and classes, instance noise, the gradient penalty's interpolation eps;
  - wraps G and D in DistributedDataParallel (gradients averaged = the global batch's mean loss),
    with ganfast's fused BatchNorm synchronised (ganfast.nn.convert_sync_batchnorm): the batch
    statistics are the global batch's, as the one-process run's;
  - writes from rank 0 only (config, checkpoints, samples, metrics, summary).

So an N-process run equals the 1-process run with the same seed and global batch, up to the order of
floating-point reductions (tests/test_distributed.py states and checks the tolerance).
"""
from __future__ import annotations

import datetime
import gc
import inspect
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist

# How long a collective may wait for the other ranks before the run fails (a rank that died without
# its launcher noticing, a hung GPU): long enough for rank 0's evaluations and checkpoints.
DEFAULT_TIMEOUT_MINUTES = 10.0


@dataclass
class World:
    """This process's place in the run: rank, world size, local rank (its GPU), and whether this
    module created the process group (and so destroys it at the end)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files, logs and draws the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_environment(cls, device: str = "auto", timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> "World":
        """The world torchrun describes in the environment (WORLD_SIZE > 1), its process group joined
        (NCCL where this rank trains on CUDA, gloo otherwise); a one-process world without it. An
        already-initialised default group (a user's own init_process_group) is used as it is."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False)
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size <= 1:
            return cls()
        if not dist.is_available():
            raise RuntimeError("ganfast.train: WORLD_SIZE > 1 but this torch build has no torch.distributed")
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if cuda:
            if local_rank >= torch.cuda.device_count():
                raise RuntimeError(f"ganfast.train: process {local_rank} of this machine has no GPU of its own "
                                   f"(torch sees {torch.cuda.device_count()}): start at most one process per GPU "
                                   f"(--nproc / torchrun --nproc-per-node), or train on the CPU (--device cpu)")
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=timeout_minutes),
                                device_id=torch.device("cuda", local_rank) if cuda else None)
        return cls(rank, size, local_rank, True)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def device(self, device: torch.device) -> torch.device:
        """Where this rank trains: its own GPU (cuda:LOCAL_RANK) in a distributed CUDA run, else device."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    # ---- the global batch, sliced ---------------------------------------------------------------

    def check_batch(self, batch_size: int, what: str = "--batch-size") -> None:
        if batch_size % self.size:
            raise ValueError(f"ganfast.train: {what} {batch_size} is the global batch and must split evenly over "
                             f"the {self.size} processes; choose a multiple of {self.size}")

    def shard(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of batch_size (all of them in one process)."""
        per = batch_size // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def local(self, t):
        """This rank's slice of a global-batch tensor (dim 0); the tensor itself in one process.
        None passes through (an absent code)."""
        if t is None or not self.distributed:
            return t
        return t[self.shard(t.shape[0])]

    # ---- agreement between ranks ----------------------------------------------------------------

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor (every rank gets it): the logged losses and statistics of
        equal slices average to the global batch's."""
        if not self.distributed:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.size

    def total(self, value: float) -> float:
        """The sum over ranks of a number (throughputs)."""
        if not self.distributed:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def any(self, flag: bool) -> bool:
        """Whether any rank says so (rank 0's wall-clock budget decides for all: every rank must stop at
        the same step, or the others would wait in a collective)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """The global batch of which t is this rank's slice (every rank's, in rank order): for what one
        process computes over the whole batch in order, as CycleGAN's history pool of fakes."""
        if not self.distributed:
            return t
        parts = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _collective_device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def wrap(module: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """module in DistributedDataParallel in a distributed world (itself otherwise). Buffers are not
    broadcast: every rank computes the same ones (synchronised BatchNorm's running statistics,
    spectral norm's power-iteration vectors from the same weights), and broadcasting them in place
    at each forward would break the gradient penalty's and spectral norm's saved tensors."""
    if not world.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # torch >= 2.14 renames broadcast_buffers (and warns on the old name); the GPUs' older torch has only it
    no_buffer_sync = ({"forward_sync_buffers": False}
                      if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                      else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=ids, output_device=ids[0] if ids else None, **no_buffer_sync)


def unwrap_all(owner) -> None:
    """Replace every DistributedDataParallel attribute of `owner` by its module and collect the
    garbage, before the process group is destroyed. A wrapper otherwise lives on in reference cycles
    (its hooks) until the interpreter's exit, and freeing gloo's pending work then, with the
    interpreter half gone, aborts the finished process (SIGABRT, 'terminate called without an active
    exception'; seen intermittently on a loaded machine, and pytorch/pytorch#179291 describes it)."""
    from torch.nn.parallel import DistributedDataParallel

    found = False
    for name, value in list(vars(owner).items()):
        if isinstance(value, DistributedDataParallel):
            setattr(owner, name, value.module)
            found = True
    if found:
        gc.collect()


# ---- `ganfast train --nproc N`: torchrun's launcher from the command itself ---------------------------


def strip_nproc(argv: Sequence[str]) -> list:
    """The command line without --nproc N / --nproc=N (what each launched process runs)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launch(argv: Sequence[str], nproc: int, timeout_minutes: Optional[float] = None) -> None:
    """Run `python -m ganfast train ARGV` in nproc processes on this machine through torch's elastic
    launcher (torchrun --standalone: a c10d rendezvous on a free local port). Returns when all have
    finished; a failure of any rank stops the others and raises its error
    (torch.distributed.elastic's ChildFailedError, naming the rank and its traceback)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 1:
        raise ValueError(f"ganfast train: --nproc must be >= 1; got {nproc}")
    env_threads = os.environ.get("OMP_NUM_THREADS")
    if env_threads is None:
        # torchrun's default: one thread per process unless the user says otherwise (--threads still wins)
        os.environ["OMP_NUM_THREADS"] = "1"
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.1, start_method="spawn")
    try:
        elastic_launch(config, sys.executable)("-m", "ganfast", "train", *argv)
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)


__all__ = ["DEFAULT_TIMEOUT_MINUTES", "World", "launch", "strip_nproc", "wrap"]

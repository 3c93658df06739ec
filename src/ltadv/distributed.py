"""Multi-GPU and multi-node training with PyTorch DistributedDataParallel, one process per device.

Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020,
arXiv 2006.15704. Launch with ``torchrun --nproc_per_node=N -m ltadv train ...``: torchrun sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables this module reads.

Semantics (README "Resuming and multi-GPU"):
- ``optim.batch_size`` is the *global* batch: each of the W processes takes batch_size / W images
  per step, and DDP averages the gradients, so a step sees the same number of images as on one device.
- Each epoch's seeded permutation is split into W disjoint shards the way ``DistributedSampler`` does
  it (pad by wrapping to a multiple of W, rank r takes every W-th index from r). Built on the loop's
  own per-epoch permutation rather than on a ``DataLoader`` sampler because the data sits on the
  device as one tensor, and because the permutation depending on (seed, epoch) only keeps resume exact.
- Every rank builds the same data (class counts come from the whole training set), attacks with the
  unwrapped module (no gradient sync during PGD) and steps on the DDP-wrapped one.
- Only rank 0 writes the run folder; the checkpoint holds every rank's RNG state.
- Evaluation (the per-epoch validation pass, the final test evaluation and ``torchrun ... ltadv eval``)
  is sharded by whole batches with per-batch seeds, so its flags equal one process's (:mod:`ltadv.shard`).
- ``train.sync_bn``: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only); off by default,
  each process then normalises with its own share of the batch.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch

from .results import is_main_process, main_process_only  # noqa: F401  (re-exported)


class DistributedError(ValueError):
    """A setting that cannot work with the current number of processes."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_batch(self, batch_size: int) -> int:
        """Per-process batch for a global ``batch_size``."""
        if batch_size % self.world_size:
            raise DistributedError(f"optim.batch_size {batch_size} is the global batch and must be divisible by "
                                   f"the number of processes ({self.world_size})")
        return batch_size // self.world_size

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's disjoint part of the epoch's permutation (``DistributedSampler``, drop_last=False)."""
        if not self.enabled:
            return order
        total = math.ceil(len(order) / self.world_size) * self.world_size
        if total > len(order):  # pad by wrapping around so every rank runs the same number of steps
            order = order.repeat(math.ceil(total / len(order)))[:total]
        return order[self.rank::self.world_size]

    def all_sum(self, *values: float) -> tuple[float, ...]:
        """Sum scalars over the ranks (epoch statistics)."""
        if not self.enabled:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return tuple(type(v)(x) for v, x in zip(values, t.tolist()))

    def wrap(self, model: torch.nn.Module, fwd, device: torch.device, compile: bool = False):
        """The forward used for the training loss: ``fwd`` alone, or ``model`` in DistributedDataParallel."""
        if not self.enabled:
            return fwd
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return torch.compile(ddp) if compile else ddp

    def gather_rng(self, state: dict) -> dict:
        """This rank's RNG state, or every rank's (``{"by_rank": [...]}``) in a distributed run."""
        if not self.enabled:
            return state
        import torch.distributed as dist

        states: list = [None] * self.world_size
        dist.all_gather_object(states, state)  # pickles between our own processes; the file is loaded safely
        return {"by_rank": states}

    def pick_rng(self, saved: dict, log=print) -> dict | None:
        """The RNG state this rank resumes with (None: keep the freshly seeded one)."""
        by_rank = saved.get("by_rank") or [saved]
        if len(by_rank) == self.world_size:
            return by_rank[self.rank]
        if self.is_main:
            log(f"checkpoint was written by {len(by_rank)} process(es), resuming with {self.world_size}: the data "
                f"shards and random streams change, so the run is no longer bit-for-bit reproducible")
        return by_rank[0] if self.is_main else None

    def barrier(self) -> None:
        """Wait for every rank (e.g. for rank 0's last checkpoint before the ranks read it)."""
        self.run_on_main(lambda: None)

    def check_sync_bn(self, sync_bn: bool, device: torch.device) -> None:
        """``train.sync_bn`` can work here: torch's SyncBatchNorm synchronises on GPUs only (its forward
        raises for CPU tensors in a process group), so a multi-process CPU job is refused before any write."""
        if sync_bn and self.enabled and device.type != "cuda":
            raise DistributedError(f"train.sync_bn needs CUDA devices: torch's SyncBatchNorm does not run on "
                                   f"{device.type} (gloo); set train.sync_bn false (each process then keeps its "
                                   f"own BatchNorm statistics) or train on GPUs")

    def sync_batchnorm(self, model: torch.nn.Module, sync_bn: bool, log=print) -> torch.nn.Module:
        """``train.sync_bn``: every BatchNorm layer of ``model`` (in place, same parameters) becomes a
        ``torch.nn.SyncBatchNorm``, whose training-mode statistics are those of the global batch over all
        processes instead of each process's share (Ioffe & Szegedy, arXiv 1502.03167; synchronised BN as in
        Peng et al., "MegDet", arXiv 1711.07240). One process: nothing to synchronise, the model is kept."""
        if not sync_bn:
            return model
        if not self.enabled:
            log("train.sync_bn: one process, nothing to synchronise; BatchNorm is left as it is")
            return model
        n = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        if not n:
            log("train.sync_bn: the model has no BatchNorm layer; nothing to synchronise")
            return model
        out = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        log(f"train.sync_bn: {n} BatchNorm layers synchronised over {self.world_size} processes")
        return out

    def run_on_main(self, fn, *args, **kwargs):
        """Run ``fn`` on rank 0 only; every rank gets its result or raises its error (also a barrier)."""
        if not self.enabled:
            return fn(*args, **kwargs)
        import torch.distributed as dist

        box: list = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn(*args, **kwargs))
            except Exception as e:  # re-raised on every rank so all of them stop with the same one line
                box[0] = ("error", e)
        dist.broadcast_object_list(box, src=0, device=_collective_device())
        kind, value = box[0]
        if kind == "error":
            raise value
        return value


def launched_rank() -> int:
    """This process's rank as torchrun announces it (0 outside a multi-process launch)."""
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def eval_setup(device: torch.device):
    """(shard, device) of a sharded evaluation: under torchrun, join the process group like training
    does (:func:`setup`); else the whole test set on ``device``."""
    from .shard import Shard

    dctx, device = setup(device)
    return Shard(dctx.rank, dctx.world_size), device


def _collective_device() -> torch.device | None:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _cleanup() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def setup(device: torch.device) -> tuple[DistContext, torch.device]:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); returns (context, device).

    NCCL on CUDA (each process takes ``cuda:LOCAL_RANK``), gloo on CPU. Ranks other than 0 print
    nothing to stdout (their errors still reach stderr). The collective timeout is
    ``LTADV_DIST_TIMEOUT`` seconds (default 3600): ranks wait that long for rank 0's test evaluation
    between the methods of ``ltadv run``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(), device
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is not None:
            raise DistributedError(f"train.device {device} names one GPU, but {world} processes share the job; "
                                   f"use cuda (each process takes cuda:LOCAL_RANK) or CUDA_VISIBLE_DEVICES")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("LTADV_DIST_TIMEOUT", "3600")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        atexit.register(_cleanup)
        if rank != 0:
            sys.stdout = open(os.devnull, "w")  # one copy of the logs and tables, from rank 0
    return DistContext(rank, world, local_rank), device

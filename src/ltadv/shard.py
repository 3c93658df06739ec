"""Sharded evaluation: W processes split the test points, rank 0 gets every per-sample flag.

Launched as ``torchrun --nproc_per_node=N -m ltadv eval RUN ...`` (or by the DDP training loop for
its validation pass and final test evaluation), each process attacks a part of the points and the
per-sample flags are combined with one ``all_reduce`` per attack, so every rank ends with the flags
of all points and rank 0 writes one record.

The result does not depend on the number of processes:
- the points are cut into batches of ``batch_size`` in the global index order (for an attack that
  runs on the clean-correct points only: in the order of those points), the same cut whatever W is;
  rank r takes the whole batches r, r + W, r + 2W, ..., so every batch holds the same points and runs
  the same kernels as in a single process;
- an attack's randomness is seeded per batch from (attack name, batch index) (:func:`batch_seed`),
  never drawn from a stream that earlier batches advanced; the global generators are left untouched;
- AutoAttack's sub-attacks re-seed themselves with the fixed AutoAttack seed on every call, so their
  randomness too is a function of the batch alone. The cascade gathers the flags after each
  sub-attack, because the next one runs only on the points still robust.

Equality is bit for bit on CPU; on CUDA it holds as far as the kernels are deterministic (the same
caveat as two single-process runs: see ``train.deterministic``).
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import torch

EVAL_SEED = 0  # base of every evaluation attack's per-batch seed (a fixed protocol, like AutoAttack's seed 0)
_NONE = torch.iinfo(torch.int64).min  # "not mine" in a combine: below every flag or stage number


def batch_seed(attack: str, batch: int, base: int = EVAL_SEED) -> int:
    """The seed of batch ``batch`` of ``attack``: a 63-bit hash of (base, attack, batch), so neighbouring
    batches and attacks get unrelated streams."""
    digest = hashlib.sha256(f"ltadv-eval/{base}/{attack}/{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def rng_scope(device, seed: int | None = None):
    """Run the body on a copy of the CPU generator and ``device``'s CUDA generator, restored after;
    seeded with ``seed`` when given. The evaluation's randomness then neither depends on nor changes
    the caller's streams (a validation pass leaves the training randomness as it was)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" \
        else []
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                with torch.cuda.device(cuda[0]):
                    torch.cuda.manual_seed(seed)
        yield


@dataclass(frozen=True)
class Shard:
    """This process's part of an evaluation: rank ``rank`` of ``world_size`` (1: the whole of it)."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> Shard:
        """The shard of the initialised ``torch.distributed`` process group (one process: the whole)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def mine(self, n_batches: int) -> range:
        """The global batch indices this rank runs: r, r + W, r + 2W, ..."""
        return range(self.rank, n_batches, self.world_size)

    def state_name(self, name: str) -> str:
        """File name of this rank's resumable state of ``name`` (``name.pt`` in one process)."""
        return f"{name}.pt" if not self.enabled else f"{name}.rank{self.rank}-of-{self.world_size}.pt"

    def combine(self, values: torch.Tensor, owned: torch.Tensor) -> torch.Tensor:
        """Every rank's ``values`` at the entries it ``owned``; elsewhere this rank's own ``values``.

        Each entry must be owned by at most one rank, and the unowned entries must hold the same value on
        every rank (the state before the attack). Integer or bool per-sample vectors; returns the dtype of
        ``values`` on its device. One ``all_reduce(MAX)`` over int64.
        """
        if not self.enabled:
            return values
        import torch.distributed as dist

        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        v = values.to(dev, torch.int64)
        sent = torch.where(owned.to(dev), v, torch.full_like(v, _NONE))
        dist.all_reduce(sent, op=dist.ReduceOp.MAX)
        out = torch.where(sent == _NONE, v, sent)
        return out.to(values.device, values.dtype)

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj`` (small python objects), in rank order."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj, src: int):
        """Rank ``src``'s ``obj`` on every rank."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]


WHOLE = Shard()

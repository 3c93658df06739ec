"""Wall-clock timing that is correct on CUDA: the one timing helper of ltadv and its benchmarks.

CUDA kernels run asynchronously, so ``time.perf_counter()`` around a call measures only the launch
unless the device is synchronized before the start and before the stop. :func:`timed` and
:class:`Stopwatch` do that (a no-op on CPU); ``benchmarks/`` and ``ltadv bench`` time with them.
"""

from __future__ import annotations

import time

import torch


def sync(device) -> None:
    """Wait for every kernel queued on ``device`` (CUDA); nothing on other devices."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """``with Stopwatch(device) as sw: ...`` then ``sw.seconds``: the block's wall time, the device
    synchronized at both ends."""

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.seconds = 0.0

    def __enter__(self) -> Stopwatch:
        sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.seconds = time.perf_counter() - self._t0


def timed(fn, device="cpu") -> float:
    """Seconds one call of ``fn()`` takes, the device synchronized at both ends."""
    with Stopwatch(device) as sw:
        fn()
    return sw.seconds

"""Progress that works with and without a terminal.

On a terminal, a tqdm bar (stderr). Without one (a job logging to a file, a Slurm job, a sweep
cell), tqdm stays silent, so a plain line goes to ``log`` every ``every`` seconds (0: every step):
``epoch 3/100: 40/110 batches, 212 img/s, ETA 0:00:42``. A loop shorter than ``every`` prints none
(its caller's summary line follows it). tqdm has no such line mode (its ``mininterval`` still redraws
one line with carriage returns), hence this small wrapper.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

from tqdm.auto import tqdm


def on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True, log=print, every: float = 30.0,
                 unit: str = "batches", images_per_step: int | None = None, initial: int = 0):
        self.total, self.desc, self.log, self.every, self.unit = total, desc, log, every, unit
        self.images_per_step = images_per_step
        self.done = initial
        self.start = time.perf_counter()
        self.last_line = self.start
        self.postfix = ""
        self.lines = enabled and not on_terminal()
        self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, disable=not enabled or self.lines)

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        if postfix:
            self.postfix = "  " + "  ".join(f"{k} {v}" for k, v in postfix.items())
            self.bar.set_postfix(**postfix, refresh=False)
        self.bar.update(n)
        if self.lines:
            now = time.perf_counter()
            if now - self.last_line >= self.every:
                self.last_line = now
                self.log(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.perf_counter()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        speed = f", {rate * self.images_per_step:.0f} img/s" if self.images_per_step and rate else ""
        left = (self.total - self.done) / rate if rate > 0 else None
        eta = f", ETA {timedelta(seconds=round(left))}" if left is not None and self.done < self.total else ""
        return f"{self.desc}: {self.done}/{self.total} {self.unit}{speed}{eta}{self.postfix}"

    def close(self) -> None:
        self.bar.close()

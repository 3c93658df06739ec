"""Seeds, RNG states that survive a checkpoint, deterministic kernels, and the resume-config rule.

A run is a function of (config, seed): the data order of each epoch is a permutation seeded by
(seed, epoch); augmentation and attack randomness come from the global generators, whose states
(python ``random``, numpy, torch CPU and every CUDA device) are saved at the end of every epoch in a
form ``torch.load(weights_only=True)`` accepts (tensors, ints, lists, dicts: no pickled objects), so
a resumed run draws exactly the numbers the uninterrupted one would have drawn.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

# Fields a resumed run may change: where it runs and what the final test evaluation reports.
# Everything else changes the training itself, so a differing value is an error, not a silent swap.
RESUME_MAY_CHANGE = frozenset({
    "train.device", "train.progress", "train.log_every", "data.root", "eval.max_batches",
    "eval.batch_size", "eval.attacks", "eval.n", "eval.checkpoints",
})


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and CUDA).

    Rank r > 0 of a distributed job gets its own stream (its augmentations and attack starts differ
    from rank 0's); rank 0 is seeded exactly as a single-process run.
    """
    s = seed + 1_000_003 * rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def capture_rng() -> dict[str, Any]:
    """Every global generator's state, as tensors and plain ints (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any] | None) -> None:
    """Inverse of :func:`capture_rng`; parts missing from older checkpoints are left as they are."""
    if state is None:
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))


def set_deterministic(on: bool) -> None:
    """``train.deterministic``: deterministic CUDA kernels (needed for bit-exact CUDA runs and resumes).

    Sets ``torch.use_deterministic_algorithms`` (warn_only: an op with no deterministic CUDA kernel
    warns, naming itself, instead of stopping a long run), cuDNN deterministic without autotuning,
    and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` as cuBLAS requires. CPU runs are deterministic without it.
    """
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    if on:
        torch.backends.cudnn.benchmark = False


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict[str, Any], given: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, given value) for every field that differs between two config dicts."""
    a, b = _flat(saved), _flat(given)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def check_resume_config(saved: dict[str, Any], given: dict[str, Any], where: str) -> None:
    """A resumed run keeps its configuration: raise ValueError naming the first differing field.

    Only the fields in :data:`RESUME_MAY_CHANGE` may differ (device, progress bars, data location,
    final-evaluation settings).
    """
    bad = [d for d in config_differences(saved, given) if d[0] not in RESUME_MAY_CHANGE]
    if bad:
        key, old, new = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ResumeConfigError(f"cannot resume {where} with a different configuration: {key} is {old!r} in the run, "
                                f"{new!r} given{more}; resume with the run's settings, or start a new run with "
                                f"another --out (or --force to replace it)")


class ResumeConfigError(ValueError):
    """``--resume`` with settings that would change the training of the saved run."""

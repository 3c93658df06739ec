"""Checkpoints: atomic writes, safe loads (``torch.load(weights_only=True)``), weights as safetensors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .results import main_process_only

# What ``train`` needs from ``last.pt``; a file without them is not an ltadv training state.
STATE_KEYS = ("model", "optimizer", "rng", "epoch", "config", "class_counts")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or from another model; the message names the file."""


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # on disk before the rename, so a crash leaves the old or the new file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@main_process_only
def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Training state (model, optimiser, RNG, epoch, ...) via torch.save, written atomically."""
    _atomic(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path, map_location="cpu", required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A training state saved by :func:`save_state`. Only tensors and plain containers are unpickled
    (``weights_only=True``): a file that asks for any other object is refused without running it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged or hostile file
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [""]
        # torch's refusal of a pickled object spans many lines; the useful one names the object.
        first = next((ln for ln in lines if "global" in ln.lower() or "WeightsUnpickler" in ln), lines[0])
        if "global" in first.lower():
            raise CheckpointError(f"refusing checkpoint {path}: it asks to unpickle objects other than tensors "
                                  f"({first}); it was not written by ltadv") from None
        raise CheckpointError(f"cannot load checkpoint {path} (damaged or truncated?): "
                              f"{type(e).__name__}: {first}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a training state")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is not an ltadv training state (no {', '.join(missing)})")
    return state


@main_process_only
def save_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Model weights as safetensors (no pickle)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic(Path(path), lambda tmp: save_file(state, tmp))


def load_weights(path: str | Path, model: torch.nn.Module) -> torch.nn.Module:
    """Load safetensors weights into ``model``; a clear error when they belong to another model."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    try:
        state = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot read weights {path}: {e}") from None
    load_matching(model, state, str(path))
    return model


def load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or shapes:
        if missing or extra:
            detail = f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}"
        else:
            k = shapes[0]
            detail = f"shape of {k} is {tuple(state[k].shape)}, model has {tuple(own[k].shape)}"

        raise CheckpointError(f"checkpoint {source} is from another model or class count ({detail})")
    model.load_state_dict(state)

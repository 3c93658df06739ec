"""Checkpoints: atomic writes, safe loads (``torch.load(weights_only=True)``), weights as safetensors."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .results import SaveError, main_process_only, save_error

# What ``train`` needs from ``last.pt``; a file without them is not an ltadv training state.
STATE_KEYS = ("model", "optimizer", "rng", "epoch", "config", "class_counts")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or from another model; the message names the file."""


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` then an fsync'd rename onto ``path``: a crash or a full disk leaves the old file."""
    _atomic(Path(path), write)


def _atomic(path: Path, write) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise save_error(path, e) from None
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # on disk before the rename, so a crash leaves the old or the new file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, SaveError):
            raise save_error(path, e) from None  # disk full, no permission: one line, old file kept
        if isinstance(e, RuntimeError) and "No space left" in str(e):  # torch.save wraps the OSError
            raise save_error(path, OSError(28, "No space left on device")) from None
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


def header_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors file's header (no tensor is read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise CheckpointError(f"cannot read weights {path}: {str(e).splitlines()[0] if str(e) else e}") from None


def check_header(path: str | Path, expected: dict[str, tuple[int, ...]]) -> None:
    """The file's tensors are exactly ``expected`` (names and shapes), read from its header only."""
    detail = _mismatch({k: tuple(v) for k, v in expected.items()}, header_shapes(path),
                       "the model described with it")
    if detail:
        raise CheckpointError(f"checkpoint {path} is from another model or class count ({detail})")


def _mismatch(own: dict[str, tuple], found: dict[str, tuple], own_name: str = "model") -> str | None:
    """What differs between a model's tensor shapes and a file's (names first, then shapes), or None."""
    missing, extra = sorted(set(own) - set(found)), sorted(set(found) - set(own))
    if missing or extra:
        return f"missing {missing[:2]}" if missing else f"unexpected {extra[:2]}"
    shapes = [k for k in own if tuple(found[k]) != tuple(own[k])]
    if not shapes:
        return None
    k = shapes[0]
    return f"shape of {k} is {tuple(found[k])}, {own_name} has {tuple(own[k])}"


MAX_CLASSES = 100_000  # far above any dataset here; a larger claim in a file is damage, not a model


def check_model_meta(meta, source: str) -> None:
    """``model_meta`` from a record or an export is well-typed and in range, before a model is built."""
    def bad(msg: str):
        raise CheckpointError(f"{source}: model_meta {msg}")

    if not isinstance(meta, dict):
        bad(f"is a {type(meta).__name__}, not a mapping")
    for k in ("num_classes", "in_channels", "image_size", "head", "mean", "std"):
        if k not in meta:
            bad(f"has no {k!r}")
    for k, hi in (("num_classes", MAX_CLASSES), ("in_channels", 64), ("image_size", 4096)):
        v = meta[k]
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
            bad(f"{k} must be an integer in [1, {hi}], got {v!r}")
    if meta["head"] not in ("linear", "cosine"):
        bad(f"head must be linear or cosine, got {meta['head']!r}")
    for k in ("mean", "std"):
        v = meta[k]
        if (not isinstance(v, list) or len(v) != meta["in_channels"]
                or not all(isinstance(x, int | float) and not isinstance(x, bool) and abs(x) < 1e6 for x in v)):
            bad(f"{k} must be {meta['in_channels']} numbers (one per channel), got {v!r}")
    if not all(x > 0 for x in meta["std"]):
        bad(f"std must be > 0, got {meta['std']}")


def load_weights(path: str | Path, model: torch.nn.Module) -> torch.nn.Module:
    """Load safetensors weights into ``model``; a clear error when they belong to another model
    (compared from the file's header, before any tensor is read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    check_header(path, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    try:
        state = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot read weights {path}: {e}") from None
    load_matching(model, state, str(path))
    return model


def load_matching(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    detail = _mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()},
                       {k: tuple(v.shape) for k, v in state.items()})
    if detail:
        raise CheckpointError(f"checkpoint {source} is from another model or class count ({detail})")
    model.load_state_dict(state)

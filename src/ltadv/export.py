"""``ltadv export``: a run's weights as one self-describing safetensors file (no pickle anywhere).

The file holds the tensors plus string metadata (the resolved config, model_meta, class counts,
which checkpoint and its epoch), so :func:`load_exported` rebuilds the model from the file alone.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from . import checkpoint as ckpt
from .build import build_checked, inference_model, load_run_model
from .config import ConfigError, from_dict

FORMAT = "ltadv-weights-1"


class ExportError(ValueError):
    """The export cannot be written as asked (existing file, wrong suffix)."""


def export_weights(run_dir: str | Path, which: str = "best", out: str | Path | None = None,
                   force: bool = False) -> Path:
    """Write ``run_dir``'s ``which`` weights to ``out`` (``.safetensors``); refuse to overwrite without force."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / f"{run_dir.name}-{which}.safetensors"
    if out.suffix != ".safetensors":
        raise ExportError(f"export file must end in .safetensors, got {out}")
    if out.is_dir():
        raise ExportError(f"{out} is a folder; --out names the .safetensors file to write")
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not _is_export(out):
        raise ExportError(f"{out} exists and is not an ltadv export; --force replaces only files ltadv wrote")
    model, record = load_run_model(run_dir, which)  # checks the weights fit the run's model
    epochs = record.get("epochs") or []
    epoch = epochs[-1]["epoch"] if epochs else None
    if which in ("best", "ema_best"):  # the raw weights' selection, or the average's own (record["ema"])
        epoch = record.get("best_epoch") if which == "best" else (record.get("ema") or {}).get("best_epoch")
    metadata = {
        "format": FORMAT,
        "which": which,
        "epoch": json.dumps(epoch),
        "config": json.dumps(record["config"]),
        "model_meta": json.dumps(record["model_meta"]),
        "class_counts": json.dumps(record["class_counts"]),
    }
    from .models import LogitAdjusted

    bare = model.model if isinstance(model, LogitAdjusted) else model  # tau_p is re-applied from the config on load
    state = {k: v.detach().contiguous().cpu() for k, v in bare.state_dict().items()}
    ckpt.atomic_write(out, lambda tmp: save_file(state, tmp, metadata=metadata))
    return out


def _is_export(path: Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:  # not a safetensors file at all
        return False


def load_exported(path: str | Path, device=None):
    """(eval-mode model, metadata) from a file written by :func:`export_weights`."""
    path = Path(path)
    if not path.is_file():
        raise ckpt.CheckpointError(f"weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise ckpt.CheckpointError(f"cannot read weights {path}: {e}") from None
    if meta.get("format") != FORMAT:
        raise ckpt.CheckpointError(f"{path} is not an ltadv export (no '{FORMAT}' metadata); "
                                   f"load a run folder instead")
    fields = {}
    for k, v in meta.items():
        try:
            fields[k] = v if k in ("format", "which") else json.loads(v)
        except json.JSONDecodeError as e:
            raise ckpt.CheckpointError(f"{path}: metadata {k!r} is not valid JSON ({e.msg})") from None
    for k in ("config", "model_meta"):
        if not isinstance(fields.get(k), dict):
            raise ckpt.CheckpointError(f"{path}: metadata {k!r} is missing or not a mapping")
    try:
        cfg = from_dict(fields["config"])
    except ConfigError as e:
        raise ckpt.CheckpointError(f"{path}: the configuration in its metadata is not valid: {e}") from None
    model = build_checked(cfg, fields["model_meta"], path, str(path))  # header shapes before allocating
    ckpt.load_weights(path, model)
    counts = fields.get("class_counts")
    if not isinstance(counts, list) or len(counts) != fields["model_meta"].get("num_classes"):
        raise ckpt.CheckpointError(f"{path}: metadata 'class_counts' is missing or does not match the model")
    model = inference_model(model, cfg, counts, fields["model_meta"]["head"])  # as load_run_model (tau_p)
    return model.to(device or "cpu").eval(), fields

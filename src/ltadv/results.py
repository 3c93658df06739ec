"""The run record: one JSON file per run (``RUN_DIR/result.json``), numbers stored as numbers.

Written atomically (temp file + rename) so a crash never leaves a half-written record.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULT = "result.json"
RECORD_KEYS = ("config", "model_meta", "class_counts")  # what loading a run's model needs from its record


class SaveError(OSError):
    """Writing a result or checkpoint failed (disk full, no permission); the message is one line."""


def save_error(path: Path, e: OSError) -> SaveError:
    why = e.strerror or str(e) or type(e).__name__
    err = SaveError(f"cannot write {path}: {why}; the previous version of the file is intact")
    err.errno = e.errno
    return err


def is_main_process() -> bool:
    """True unless this is a non-zero rank of an initialised torch.distributed process group."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to ask
    return dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_rank() == 0


def main_process_only(fn):
    """Decorator for the functions that write a run folder: a no-op on distributed ranks other than 0."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_main_process() else None

    return wrapper


@main_process_only
def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise save_error(path, e) from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, SaveError):
            raise save_error(path, e) from None
        raise


def read_record(run_dir: str | Path, required: tuple[str, ...] = ("config",)) -> dict[str, Any]:
    """The record of a run folder; a ValueError naming the file when it is missing, not JSON, or lacks
    one of the ``required`` entries."""
    path = Path(run_dir) / RESULT
    if not path.is_file():
        raise ValueError(f"no run record at {path}")
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read run record {path}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"run record {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"run record {path} holds a {type(rec).__name__}, not a record")
    for key in ("config", *required):
        if key not in rec:
            raise ValueError(f"run record {path} has no {key!r} entry")
    if not isinstance(rec["config"], dict):
        raise ValueError(f"run record {path}: 'config' is not a mapping")
    return rec


def git_commit() -> str | None:
    """The commit of the ltadv source tree, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def git_dirty() -> bool | None:
    """Whether the ltadv checkout has uncommitted changes to tracked files (None: not a git checkout)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    """The CPU's marketing name (Linux ``/proc/cpuinfo``; elsewhere ``platform.processor()``)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def environment() -> dict[str, Any]:
    """The software and hardware a run ran on, for its record: ltadv version and commit (and whether the
    checkout had uncommitted changes), Python, torch, torchvision, CUDA and cuDNN versions (None without
    them), the GPUs (name and count; 0 and None on a CPU) and the CPU model, and the AutoAttack
    package's version (None when it is not installed)."""
    import platform

    import torch

    from ._version import __version__

    cuda = torch.cuda.is_available()
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "ltadv": __version__,
        "commit": git_commit(),
        "commit_dirty": git_dirty(),  # the commit alone does not name the code that ran
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _package_version("torchvision"),
        "numpy": _package_version("numpy"),
        "cuda": torch.version.cuda,
        "cudnn": int(cudnn) if cudnn is not None else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "pyautoattack": _package_version("pyautoattack"),
    }

"""The run record: one JSON file per run (``RUN_DIR/result.json``), numbers stored as numbers.

Written atomically (temp file + rename) so a crash never leaves a half-written record.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

RESULT = "result.json"


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(run_dir: str | Path) -> dict[str, Any]:
    """The record of a run folder; a ValueError naming the file when it is missing or not JSON."""
    path = Path(run_dir) / RESULT
    if not path.is_file():
        raise ValueError(f"no run record at {path}")
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"run record {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(rec, dict) or "config" not in rec:
        raise ValueError(f"run record {path} has no 'config' entry")
    return rec


def git_commit() -> str | None:
    """The commit of the ltadv source tree, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None

"""One sweep cell on disk: its status and the ``ltadv train`` command that runs or resumes it.

Shared by the sweep's launchers (the local one in :mod:`ltadv.sweep`, the Slurm one in
:mod:`ltadv.slurm`), so a cell runs the same command whichever launcher starts it, and the command is
decided when the cell starts (a requeued cell finds its checkpoint and resumes).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .results import read_record


def cell_status(run_dir: Path) -> str:
    """complete | partial (a checkpoint to resume) | empty."""
    try:
        if read_record(run_dir).get("status") == "complete":
            return "complete"
    except ValueError:
        pass
    if (Path(run_dir) / "checkpoints" / "last.pt").is_file():
        return "partial"
    return "empty"


def cell_command(cfg_file: Path, run_dir: Path, quiet: bool = True, gpus: int = 1) -> list[str]:
    """``python -m ltadv train --config CFG --out RUN_DIR`` with ``--resume`` when the cell has a
    checkpoint, else ``--force`` (which deletes only ltadv's own files of an unfinished first start).
    With ``gpus`` > 1 the cell trains with DDP, one process per GPU, through torchrun."""
    launch = [sys.executable, "-m"]
    if gpus > 1:
        launch += ["torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "-m"]
    cmd = [*launch, "ltadv", "train", "--config", str(cfg_file), "--out", str(run_dir)]
    cmd += ["--resume"] if cell_status(Path(run_dir)) == "partial" else ["--force"]
    if quiet:
        cmd.append("--quiet")
    return cmd

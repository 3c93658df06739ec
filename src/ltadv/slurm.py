"""Sweep cells as Slurm jobs through submitit (https://github.com/facebookincubator/submitit).

``ltadv sweep SPEC --launcher slurm`` submits every unfinished cell as one task of a Slurm job array
(``--array-parallelism`` of them at a time). Each task runs the cell exactly as the local launcher
does, ``python -m ltadv train --config OUT/_cells/<cell>.yaml --out OUT/<cell>`` with ``--resume``
when the cell has a checkpoint, decided when the task starts. So a task that is requeued after a
preemption or its time limit continues from the cell's last finished epoch instead of starting again.

Preemption and time limits follow submitit's protocol: Slurm sends the job's signal (SIGUSR2, or
``$SUBMITIT_PREEMPT_SIGNAL``) before stopping it; :meth:`CellJob.checkpoint` then stops the training
process cleanly (SIGTERM: its record says ``interrupted``, its lock is released, ``last.pt`` holds
the last finished epoch) and hands submitit the same cell to requeue. ``--launcher submitit-local``
runs the same jobs as local processes through submitit's LocalExecutor (how the tests run it, and a
way to try a sweep file before sending it to a cluster).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cells import cell_command, cell_status

LAUNCHERS = ("local", "slurm", "submitit-local")
SUBMITIT_DIR = "_submitit"  # submitit's job scripts, pickles and logs, under the sweep's folder
STOP_WAIT_S = 60.0  # a preempted cell's training gets this long to stop cleanly (submitit signals 90 s early)


class SlurmError(ValueError):
    """A Slurm option the launcher cannot use, or submitit missing."""


@dataclass(frozen=True)
class SlurmOptions:
    """What each cell's job asks the scheduler for (submitit's AutoExecutor parameters)."""

    cluster: str = "slurm"  # slurm | local (submitit's LocalExecutor: the same jobs as local processes)
    partition: str | None = None
    gpus_per_job: int = 1
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    time_min: int = 24 * 60
    array_parallelism: int | None = None  # at most this many cells at a time (Slurm's %N)
    max_timeouts: int = 3  # requeues after hitting the time limit (preemptions do not count)
    extra: dict[str, str] = field(default_factory=dict)  # --slurm-opt key=value: account, qos, constraint, ...


def parse_time(text: str) -> int:
    """Minutes (rounded up) from sbatch's ``--time`` formats: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S``."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not m:
        raise SlurmError(f"--time {text!r} is not a Slurm time (M, M:S, H:M:S, D-H, D-H:M or D-H:M:S)")
    days, parts = m.group(1), [int(g) for g in m.groups()[1:] if g is not None]
    if days is not None:
        h, mi, sec = (parts + [0, 0])[:3]
        seconds = int(days) * 86400 + h * 3600 + mi * 60 + sec
    else:
        seconds = {1: lambda mi: mi * 60, 2: lambda mi, sec: mi * 60 + sec,
                   3: lambda h, mi, sec: h * 3600 + mi * 60 + sec}[len(parts)](*parts)
    if seconds < 60:
        raise SlurmError(f"--time {text!r} must be at least one minute")
    return -(-seconds // 60)


def parse_slurm_opts(items) -> dict[str, str]:
    """``["account=lab", "qos=high"]`` -> ``{"account": "lab", "qos": "high"}`` (sbatch's long options)."""
    out: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise SlurmError(f"--slurm-opt {item!r} must be KEY=VALUE with an sbatch option name, e.g. account=mylab")
        out[key] = value.strip()
    return out


def _preempt_signal():
    from submitit import JobEnvironment

    return JobEnvironment._usr_sig()  # submitit's preemption signal: USR2 unless SUBMITIT_PREEMPT_SIGNAL says


class CellJob:
    """One cell as a submitit job: runs (or resumes) its training, and on preemption stops it and asks
    submitit to requeue the same cell (``checkpoint``, submitit's Checkpointable protocol)."""

    def __init__(self, gpus: int = 1) -> None:
        self.gpus = gpus  # > 1: the cell trains with DDP over the job's GPUs (torchrun)
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {"gpus": self.gpus}  # the running process stays here; a requeued job starts its own

    def __setstate__(self, state: dict) -> None:
        self.gpus = state.get("gpus", 1)
        self._proc = None

    def __call__(self, cfg_file: str, run_dir: str, quiet: bool = True) -> str:
        if cell_status(Path(run_dir)) == "complete":
            return "complete"
        cmd = cell_command(Path(cfg_file), Path(run_dir), quiet, self.gpus)
        sig = _preempt_signal()
        print(" ".join(cmd), flush=True)
        # The training process ignores submitit's signal (Slurm sends it to every process of the step):
        # this process receives it too, and stops the training cleanly before requeueing.
        self._proc = subprocess.Popen(cmd, preexec_fn=lambda: signal.signal(sig, signal.SIG_IGN))
        # poll, not wait(): the signal handler (checkpoint) must be able to wait for the process itself,
        # and Popen.wait holds a lock that a handler running in this same thread could never take
        while (rc := self._proc.poll()) is None:
            time.sleep(0.5)
        self._proc = None
        if rc != 0:
            raise RuntimeError(f"ltadv train exited with code {rc} (see this job's log; rerunning the sweep "
                               f"resumes the cell from its last finished epoch)")
        return cell_status(Path(run_dir))

    def checkpoint(self, cfg_file: str, run_dir: str, quiet: bool = True):
        """Preempted or out of time: stop the training (its last finished epoch is on disk) and requeue."""
        from submitit.helpers import DelayedSubmission

        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # ltadv marks the record interrupted and releases the lock
            if not _exited(proc, STOP_WAIT_S):
                proc.kill()
                _exited(proc, 10.0)
        return DelayedSubmission(CellJob(self.gpus), cfg_file, run_dir, quiet)


def _exited(proc: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while proc.poll() is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def check_available(opts: SlurmOptions) -> None:
    """submitit is installed and, for Slurm, sbatch is on PATH: checked before the sweep writes anything."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise SlurmError("the slurm launcher needs submitit: pip install 'ltadv[slurm]'") from None
    if opts.cluster == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
        raise SlurmError("--launcher slurm needs a Slurm cluster here (sbatch and srun not found); "
                         "--launcher submitit-local runs the same jobs on this machine")


def make_executor(folder: Path, opts: SlurmOptions, name: str):
    """submitit's AutoExecutor for ``opts.cluster`` with the job's resources."""
    try:
        import submitit
    except ImportError:
        raise SlurmError("the slurm launcher needs submitit: pip install 'ltadv[slurm]'") from None
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=opts.cluster, slurm_max_num_timeout=opts.max_timeouts)
    except RuntimeError as e:  # submitit: no srun on this machine
        raise SlurmError(f"--launcher slurm needs a Slurm cluster here ({e}); --launcher submitit-local runs the "
                         f"same jobs on this machine") from None
    params = {"name": name, "timeout_min": opts.time_min, "gpus_per_node": opts.gpus_per_job,
              "tasks_per_node": 1, "nodes": 1}
    if opts.cpus_per_job is not None:
        params["cpus_per_task"] = opts.cpus_per_job
    if opts.mem_gb is not None:
        params["mem_gb"] = opts.mem_gb
    if opts.partition is not None:
        params["slurm_partition"] = opts.partition
    if opts.array_parallelism is not None:
        params["slurm_array_parallelism"] = opts.array_parallelism
    if opts.extra:
        params["slurm_additional_parameters"] = dict(opts.extra)
    if opts.cluster == "local":
        params["gpus_per_node"] = 0 if not _has_cuda() else opts.gpus_per_job
    ex.update_parameters(**params)
    return ex


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_cells(cells: list[tuple[str, Path, Path]], out: Path, opts: SlurmOptions, quiet: bool = True,
              log=print, job_name: str = "ltadv") -> dict[str, str]:
    """Submit ``[(cell, cfg_file, run_dir)]`` as one job array and wait for every job.

    Returns ``{cell: error}`` for the cells whose job failed (empty when all finished).
    """
    if not cells:
        return {}
    import submitit

    ex = make_executor(out / SUBMITIT_DIR, opts, job_name)
    try:
        with ex.batch():
            gpus = opts.gpus_per_job if opts.cluster == "slurm" or _has_cuda() else 1
            jobs = {name: ex.submit(CellJob(gpus), str(cfg), str(run), quiet) for name, cfg, run in cells}
    except submitit.core.utils.FailedSubmissionError as e:  # sbatch refused the array (partition, account, ...)
        last = (str(e).strip().splitlines() or ["(no message)"])[-1]
        raise SlurmError(f"sbatch refused the sweep's jobs: {last}") from None
    for name, job in jobs.items():
        log(f"{name}: submitted as job {job.job_id}")
    failures: dict[str, str] = {}
    by_id = {job.job_id: name for name, job in jobs.items()}
    for job in submitit.helpers.as_completed(list(jobs.values()), poll_frequency=_poll(opts)):
        name = by_id[job.job_id]
        try:
            job.result()
            log(f"{name}: done (job {job.job_id})")
        except Exception as e:  # a failed job: its error, named per cell; the others carry on
            last = (str(e).strip().splitlines() or ["(no output)"])[-1]
            failures[name] = f"job {job.job_id}: {last}"
            log(f"{name}: FAILED (job {job.job_id}); its log: {job.paths.stderr}")
    return failures


def _poll(opts: SlurmOptions) -> float:
    return 1.0 if opts.cluster == "local" else 60.0  # sacct on a real cluster: once a minute is plenty


__all__ = ["LAUNCHERS", "CellJob", "SlurmError", "SlurmOptions", "check_available", "make_executor", "parse_slurm_opts",
           "parse_time", "run_cells"]

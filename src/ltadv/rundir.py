"""A run folder's bookkeeping: what ltadv may delete there, and the lock that keeps one writer in it.

Rules (README, *Reliability*):
- A command writes only inside its own output folder. ``--force`` deletes only what ltadv made in a
  run folder (:data:`OWNED`: the record, the checkpoints, the evaluation state, ltadv's temp files),
  and only in a folder that is a run folder (it holds an ltadv ``result.json``) or is empty; other
  files, sub-folders, parents and siblings are never touched.
- One writer per run folder: an OS-level lock (``fcntl.flock`` on ``RUN_DIR/.ltadv.lock``, holding
  the PID) is held while a process trains or evaluates it. The kernel drops a flock when its
  process dies, so a lock file left by a killed process is stale by construction and simply taken
  over; a live holder makes a second writer stop with one line naming the holder's PID.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import threading
from pathlib import Path

from .results import RESULT, read_record, write_json_atomic

CKPT_DIR = "checkpoints"
EVAL_STATE = "eval_state"
LOCK = ".ltadv.lock"
# What ltadv writes into a run folder; ``--force`` deletes exactly these (and its own temp files).
SUBSET_FILE = "subset.npz"  # the long-tailed subset's image indices (train_indices, val_indices)
OWNED_FILES = (RESULT, SUBSET_FILE)
OWNED_CKPTS = ("best.safetensors", "last.safetensors", "last.pt", "ema_best.safetensors", "ema_last.safetensors")
PLAIN_NAME = re.compile(r"^[^/\\\x00-\x1f.~-][^/\\\x00-\x1f]*$")  # no separator, no leading . ~ -


class RunDirError(ValueError):
    """The run folder cannot be used as asked (exists without --resume/--force, unwritable, locked, ...)."""


class RunLockedError(RunDirError):
    """Another live process holds the run folder's lock."""


class RunFailed(ValueError):
    """The run itself cannot go on (e.g. a non-finite loss); the record is marked ``failed``."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) while a run folder is held; the record is marked ``interrupted``."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = signum


def check_plain_name(name: str, what: str) -> str:
    """A name read from a file that becomes a folder name: no separators, no '..', not absolute."""
    if not isinstance(name, str) or not PLAIN_NAME.match(name) or name in (".", "..") or len(name) > 200:
        raise RunDirError(f"{what} {name!r} is not a plain folder name (no '/' or '\\', not starting with "
                          f"'.', '~' or '-', at most 200 characters)")
    return name


def is_run_folder(path: Path) -> bool:
    """True when ``path`` holds an ltadv run record (a JSON object with a ``config`` entry)."""
    rec = Path(path) / RESULT
    if not rec.is_file():
        return False
    try:
        data = json.loads(rec.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("config"), dict)


def _is_temp(name: str) -> bool:
    """ltadv's atomic-write temp files: ``.<target>.<random>`` next to the target."""
    return name.startswith(".") and any(name.startswith(f".{t}.") for t in (*OWNED_FILES, *OWNED_CKPTS, "flags.pt"))


def clear_run(out: Path) -> list[Path]:
    """Delete what ltadv made in the run folder ``out`` (record, checkpoints, eval state, temp files).

    Refuses (RunDirError) a non-empty folder that is not a run folder. Foreign files and folders are
    kept; ``checkpoints/`` is removed only when nothing foreign is left in it. Returns what was deleted.
    """
    out = Path(out)
    if not out.is_dir():
        return []
    if not is_empty(out) and not is_run_folder(out):
        raise RunDirError(f"{out} holds files that ltadv did not make (no run record {RESULT} there); "
                          f"--force deletes only ltadv's run folders: choose another --out")
    deleted: list[Path] = []

    def rm(p: Path) -> None:
        if p.is_symlink() or p.is_file():
            p.unlink()
            deleted.append(p)
        elif p.is_dir():
            shutil.rmtree(p)
            deleted.append(p)

    for p in out.iterdir():
        if p.name in OWNED_FILES or _is_temp(p.name):
            rm(p)
    ckdir = out / CKPT_DIR
    if ckdir.is_dir() and not ckdir.is_symlink():
        for p in ckdir.iterdir():
            if p.name in OWNED_CKPTS or _is_temp(p.name):
                rm(p)
        with contextlib.suppress(OSError):
            ckdir.rmdir()  # only when empty: a foreign file in it stays, with its folder
    es = out / EVAL_STATE
    if es.is_dir() and not es.is_symlink():
        rm(es)  # per-sample flags and attack state of the deleted weights: all of it is ltadv's
    return deleted


def is_empty(out: Path) -> bool:
    """True when ``out`` holds nothing but (at most) a lock file."""
    return all(p.name == LOCK for p in Path(out).iterdir())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


_HELD: dict[str, int] = {}  # resolved run folder -> depth, so train -> evaluate_run nests in one process


class RunLock:
    """``with RunLock(out):`` holds ``out/.ltadv.lock`` (fcntl.flock, exclusive, non-blocking).

    Re-entrant within one process. A held lock raises :class:`RunLockedError` naming the holder's PID;
    a lock file whose process died is free (the kernel released it) and is taken over.
    """

    def __init__(self, out: str | Path, log=None):
        self.out = Path(out)
        self.log = log
        self.fd: int | None = None
        self.key = ""

    def __enter__(self) -> RunLock:
        self.key = str(self.out.resolve())
        if _HELD.get(self.key):
            _HELD[self.key] += 1
            return self
        path = self.out / LOCK
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise RunDirError(f"cannot create the lock file {path}: {e.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunDirError(f"cannot lock {path}: {e.strerror}") from None
                pid = _read_pid(path)
                who = f"PID {pid}" if pid is not None else "another process"
                raise RunLockedError(f"run folder {self.out} is in use by {who} (lock {path}); wait for it to "
                                     f"finish or stop it first") from None
            try:  # the file may have been unlinked by a holder releasing it between our open and flock
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = _read_pid(path)
        if stale is not None and stale != os.getpid() and self.log is not None and not _pid_alive(stale):
            self.log(f"taking over the stale lock of {self.out} left by PID {stale} (no longer running)")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        _HELD[self.key] = 1
        return self

    def __exit__(self, *exc) -> None:
        _HELD[self.key] -= 1
        if _HELD[self.key]:
            return
        del _HELD[self.key]
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.out / LOCK)  # while still holding it: a waiter re-checks the inode
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def lock_holder(out: str | Path) -> int | None:
    """PID holding ``out``'s lock, or None when it is free. Reads only: creates no file."""
    path = Path(out) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_pid(path) or -1
    finally:
        os.close(fd)
    return None


def run_state(out: str | Path, record: dict) -> str:
    """What a run is doing: complete | trained | running | stopped | interrupted | failed.

    ``running`` needs a live lock holder; a record saying running without one is ``stopped`` (the
    process was killed without a chance to write; ``--resume`` continues it).
    """
    status = record.get("status", "complete")
    if status in ("running", "trained", "evaluating") and lock_holder(out) is not None:
        return "running"
    if status == "running":
        return "stopped"
    return status if isinstance(status, str) else "unknown"


def check_start(out: Path, resume: bool | None, force: bool, config: dict | None = None) -> None:
    """Refuse, before anything is written, a run folder that cannot be used as asked."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"output path {out} exists and is not a folder")
    if not out.is_dir() or is_empty(out):
        return
    for name in (RESULT, CKPT_DIR, EVAL_STATE, LOCK):
        if (out / name).is_symlink():  # writing through it would land outside the run folder
            raise RunDirError(f"{out / name} is a symbolic link; ltadv writes only inside the run folder, "
                              f"so it must be a plain file or folder")
    if not (resume or force) and not restartable(out, config):
        hint = "pass --force to replace it" if resume is None else \
            "pass --resume to continue it or --force to start it again"
        raise RunDirError(f"run directory {out} already exists; {hint}")
    if force and not resume and not is_run_folder(out):
        raise RunDirError(f"{out} holds files that ltadv did not make (no run record {RESULT} there); "
                          f"--force deletes only ltadv's run folders: choose another --out")


def restartable(out: Path, config: dict | None) -> bool:
    """A run that stopped before its first epoch with the same config: an identical rerun may start it."""
    if config is None or not is_run_folder(out) or (out / CKPT_DIR / "last.pt").exists():
        return False
    rec = json.loads((out / RESULT).read_text())
    return not rec.get("epochs") and rec.get("config") == config and lock_holder(out) in (None, os.getpid())


class RunGuard:
    """The folder side of one run: checked start, lock, and the status written when it stops early."""

    def __init__(self, out: str | Path, log=print):
        self.out, self.log, self.lock = Path(out), log, None
        self.begun = False  # set once the run is under way: an error after it marks the record failed

    def start(self, resume: bool | None, force: bool, config: dict | None = None) -> None:
        """``resume`` None: the command has no --resume (posthoc); only --force may replace a run."""
        check_start(self.out, resume, force, config)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            probe = self.out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise RunDirError(f"output folder {self.out} is not writable: {e.strerror}") from None
        self.lock = RunLock(self.out, self.log).__enter__()
        try:  # again under the lock: another process may have made a run here since the first check
            check_start(self.out, resume, force, config)
        except RunDirError:
            self.close()
            raise
        if (force and not resume) or (not resume and restartable(self.out, config)):
            clear_run(self.out)

    def mark(self, status: str, reason: str | None = None) -> None:
        """Set the on-disk record's status (it reflects the last finished epoch, like last.pt)."""
        if self.lock is None:
            return  # this process never took the folder: nothing of it to mark
        try:
            rec = read_record(self.out)
        except ValueError:
            return
        rec["status"] = status
        if reason is not None:
            rec["failure"] = reason
        with contextlib.suppress(OSError):
            write_json_atomic(self.out / RESULT, rec)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
            self.lock = None


@contextlib.contextmanager
def signals_as_interrupt():
    """SIGTERM raises :class:`Interrupted` in the main thread (SIGINT already raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def guarded_run(out: str | Path, log=print):
    """``with guarded_run(out) as guard: ...; guard.start(...)``: the record says ``interrupted`` after
    Ctrl-C / SIGTERM and ``failed`` (with the reason) after an error, and the lock is always released."""
    guard = RunGuard(out, log)
    try:
        with signals_as_interrupt():
            yield guard
    except KeyboardInterrupt:
        if guard.begun:
            guard.mark("interrupted")
        raise
    except Exception as e:  # before the run began (a bad --resume checkpoint, ...) the folder stays as it was
        if isinstance(e, RunFailed) or guard.begun:
            guard.mark("failed", str(e) if isinstance(e, RunFailed) else f"{type(e).__name__}: {e}")
        raise
    finally:
        guard.close()

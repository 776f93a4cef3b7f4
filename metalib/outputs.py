"""Writing a run's files without losing work: atomic writes, one process per output, distinct output paths.

* :func:`write_atomic` / :func:`torch_save_atomic`: the data goes to a temporary file in the destination's folder,
  then ``os.replace`` puts it in place, so the previous file stays whole whatever happens (a full disk, a
  kill); a failed write raises one line naming the file and the reason ("no space left on device").
  ``torch.save`` serialises into memory first, so that torch's own write errors (``[enforce fail at
  inline_container.cc]``) never reach the user: a disk error is an :class:`OSError` from a plain write.
* :class:`OutputLock`: an advisory lock beside an output (``<file>.lock``, ``fcntl.flock``), so a second
  process writing the same checkpoint stops at once naming the first. The kernel drops the lock when its
  process dies, so a lock file left by a killed run is never obeyed.
* :func:`check_distinct`: two outputs of one run must not share a path.
"""
from __future__ import annotations

import errno
import io
import os
import re
import socket
import threading
import warnings
from pathlib import Path
from typing import Mapping

from .errors import UserError

__all__ = ["OutputWriteError", "OutputInUseError", "write_atomic", "torch_save_atomic", "OutputLock",
           "check_distinct", "temp_name", "lock_path", "sweep_dead_writers"]

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; runs are then not protected against each other
    fcntl = None


class OutputWriteError(UserError, OSError):
    """An output could not be written (a full disk, a read-only folder); the previous file is intact."""


class OutputInUseError(UserError, RuntimeError):
    """Another process is writing the same output."""


def temp_name(path: Path) -> Path:
    """The temporary file :func:`write_atomic` uses for ``path``: ``.<name>.tmp<PID>-<thread>`` in the same folder
    (swept by :func:`metalib.checkpoints.sweep_temporaries` once its process is gone)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")


def sweep_dead_writers(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """Remove the files of ``folder`` whose whole name matches ``pattern`` (a regular expression whose first group
    is the writer's PID) and whose writer no longer runs: the temporaries a killed process left. Nothing else is
    touched; returns what was removed."""
    from .paths import process_running

    folder, regex, removed = Path(folder), re.compile(pattern), []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        match = regex.fullmatch(p.name)
        if match and int(match.group(1)) != os.getpid() and not process_running(int(match.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device"
    return exc.strerror or str(exc) or type(exc).__name__


def write_atomic(path: str | os.PathLike, data: bytes | str, what: str = "file") -> Path:
    """Write ``data`` to ``path`` atomically; on failure the temporary file is removed, ``path`` keeps its old
    content, and :class:`OutputWriteError` names the file, the reason and the fix."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        reason = _reason(exc)
        fix = "free some space" if reason.startswith("no space") else "make the folder writable or choose another path"
        kept = "the previous file is intact" if path.exists() else "nothing was written"
        raise OutputWriteError(f"cannot write the {what} {path}: {reason} ({kept}); {fix} and run the same "
                               f"command again") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def torch_save_atomic(path: str | os.PathLike, obj: object, what: str = "checkpoint") -> Path:
    """``torch.save(obj)`` into memory, then :func:`write_atomic` (see the module docstring for why)."""
    import torch  # here, so that the runner and metrics (which use write_atomic) do not import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_atomic(path, buffer.getvalue(), what)


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: ``<path>.lock``."""
    return Path(path).with_name(Path(path).name + ".lock")


class OutputLock:
    """Hold ``<path>.lock`` while a process writes ``path``; a second holder gets :class:`OutputInUseError`.

    Use as a context manager. The lock file records ``host pid`` of its holder for the message and is removed
    on release. Where ``fcntl`` is missing (Windows) it does nothing.
    """

    def __init__(self, path: str | os.PathLike, what: str = "checkpoint"):
        self.path = Path(path)
        self.lock_path = lock_path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        if fcntl is None or self._fd is not None:
            return self
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):  # a filesystem without flock (some NFS/Lustre)
                    os.close(fd)
                    warnings.warn(f"cannot lock {self.lock_path} ({exc.strerror}): this filesystem does not support "
                                  f"flock, so nothing stops a second run from writing {self.path} too", stacklevel=3)
                    return self
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise OutputInUseError(
                    f"{self.what} {self.path} is being written by another run ({holder}, lock {self.lock_path}); "
                    f"wait for it to finish, stop it, or choose another path") from None
            try:  # the holder we waited on may have removed the file: lock the file that is there now
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:  # who holds it, for the other run's message; the flock alone is the lock (a full disk is no reason to stop)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}".encode(), 0)
        except OSError:
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.lock_path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_distinct(outputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse two outputs of one run at the same path, or one inside another (e.g. a CSV inside the snapshot
    folder): ``{description: path}``; ``None`` entries are skipped."""
    seen: list[tuple[str, Path]] = []
    for what, path in outputs.items():
        if path is None:
            continue
        p = Path(path).expanduser().resolve()
        for other, q in seen:
            if p == q or q in p.parents or p in q.parents:
                how = "are the same path" if p == q else "overlap (one lies inside the other)"
                raise UserError(f"the {other} ({outputs[other]}) and the {what} ({path}) {how}: each output needs "
                                f"its own path; choose another one for either")
        seen.append((what, p))

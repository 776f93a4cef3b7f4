"""Checkpoint files: atomic writes, safe loads, the check that a resumed run is the same run, run folders
keyed by settings and code, and the snapshots kept for accuracy-against-time curves."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch

from .errors import UserError
from .outputs import sweep_dead_writers, torch_save_atomic

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "check_same_run", "require_keys", "restore",
           "sweep_temporaries", "sweep_folder", "OutputPathError", "check_writable", "code_fingerprint", "run_dir", "load_snapshots",
           "snapshot_dir"]


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` atomically (:func:`metalib.outputs.torch_save_atomic`): the previous file stays whole if the
    write fails (a full disk gives one line naming the file), and no temporary file is left behind."""
    torch_save_atomic(path, state, "checkpoint")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used: unreadable, empty, not metalib's, or from another run or model."""


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``: tensors and plain containers only); a file that is
    not a readable checkpoint raises :class:`CheckpointError` naming it."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"checkpoint {path} is empty (0 bytes); delete it, or start over with another "
                                  f"checkpoint path or --no-resume")
        state = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # torch raises RuntimeError, EOFError, OSError, UnpicklingError, zip errors ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc):
            reason = "it holds Python objects other than tensors and plain containers (not written by metalib)"
        raise CheckpointError(f"checkpoint {path} cannot be read as a metalib checkpoint ({reason[:200]}); delete "
                              f"or move it, or start over with another checkpoint path or --no-resume") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a metalib checkpoint (a dict); "
                              f"use another checkpoint path or --no-resume")
    return state


def require_keys(path: str | os.PathLike, state: dict, keys: tuple[str, ...], what: str) -> None:
    """Check that ``state`` (loaded from ``path``) holds ``keys``; else a one-line :class:`CheckpointError`."""
    missing = [k for k in keys if k not in state]
    if missing:
        held = ", ".join(sorted(map(str, state))[:8]) or "nothing"
        raise CheckpointError(f"checkpoint {path} holds {held}, not {what} (missing {', '.join(missing)}); use "
                              f"another checkpoint path or --no-resume")


def restore(path: str | os.PathLike, module_or_optimizer, state: dict, what: str) -> None:
    """``load_state_dict`` with a one-line error when the checkpoint was written for another model or optimiser,
    or holds tensors of another dtype than the module's (``load_state_dict`` would cast them silently: a float16
    copy of a float32 run resumes with its precision lost)."""
    if isinstance(module_or_optimizer, torch.nn.Module):
        own = module_or_optimizer.state_dict()
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and k in own and v.is_floating_point() and v.dtype != own[k].dtype:
                raise CheckpointError(f"checkpoint {path} holds {k} as {v.dtype} where this {what} has "
                                      f"{own[k].dtype}: it is a converted copy, not this run's checkpoint; resume from "
                                      f"the original file, or start over with another checkpoint path or --no-resume")
    try:
        module_or_optimizer.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise CheckpointError(f"checkpoint {path} does not fit this {what} ({first}); it was written for another "
                              f"model, algorithm or optimiser: resume with the same settings, or use another "
                              f"checkpoint path or --no-resume") from None


def sweep_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove temporary files that :func:`save_checkpoint` left next to ``path`` when its process was killed
    (``.<name>.tmp<PID>`` whose PID no longer runs); returns what was removed. Nothing else is touched."""
    path = Path(path)
    return sweep_dead_writers(path.parent, rf"\.{re.escape(path.name)}\.tmp(\d+)(?:-\d+)?")


def sweep_folder(folder: str | os.PathLike) -> list[Path]:
    """:func:`sweep_temporaries` for every file of ``folder`` (e.g. the snapshots of a run): removes the
    ``.<name>.tmp<PID>`` files of processes that no longer run."""
    return sweep_dead_writers(folder, r"\..+\.tmp(\d+)(?:-\d+)?")


def check_same_run(checkpoint: str | os.PathLike, saved: dict | None, wanted: dict | None) -> None:
    """A resumed run must be the same run: compare the settings recorded in the checkpoint with this run's.

    Keys starting with ``_`` are not settings; ``wanted["_defaults"]`` (if present) gives the values that options
    left unset resolve to, so a recorded ``None`` equals that value."""
    if saved is None or wanted is None:
        return
    defaults = wanted.get("_defaults") or {}

    def same(k: str) -> bool:
        a, b = saved.get(k), wanted.get(k)
        return a == b or (a is None and k in defaults and b == defaults[k])

    keys = sorted(k for k in set(saved) | set(wanted) if not str(k).startswith("_"))
    differ = [f"{k}: checkpoint {saved.get(k)!r}, now {wanted.get(k)!r}" for k in keys if not same(k)]
    if differ:
        raise CheckpointError(f"checkpoint {checkpoint} belongs to a different run ({'; '.join(differ)}); resume with the "
                              f"same settings, or start over with another checkpoint path or --no-resume")


def code_fingerprint() -> str:
    """A short hash of metalib's own source: it changes whenever the library's code does."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def run_dir(root: str | os.PathLike, settings: dict) -> Path:
    """``root/<key>``: a folder for one run's checkpoints, keyed by its ``settings`` and metalib's code, so that
    a rerun with other settings or other code starts afresh instead of resuming a stale run. The settings
    are written next to the checkpoints (``settings.json``)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    key = hashlib.sha1((text + code_fingerprint()).encode()).hexdigest()[:10]
    folder = Path(root) / key
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(json.dumps({"settings": settings, "code": code_fingerprint()},
                                                     sort_keys=True, indent=1, default=str))
    return folder


def snapshot_dir(checkpoint: str | os.PathLike) -> Path:
    """The folder of the snapshots kept beside ``checkpoint``: ``<checkpoint>.snapshots``."""
    return Path(checkpoint).with_name(Path(checkpoint).name + ".snapshots")


def load_snapshots(checkpoint: str | os.PathLike) -> dict[int, dict]:
    """The meta-parameter snapshots ``meta_train(..., snapshot_every=N)`` kept next to ``checkpoint``:
    ``{step: state}`` with ``state["learner"]`` (a ``state_dict``), ``state["elapsed"]`` and ``state["cpu_s"]``."""
    folder = snapshot_dir(checkpoint)
    return {int(p.stem[len("step"):]): load_checkpoint(p) for p in sorted(folder.glob("step*.pt"))}


class OutputPathError(UserError, ValueError):
    """An output file that cannot be written (its folder is a file, read-only, or the path is a folder)."""


def check_writable(path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """Check before any long work that ``path`` can be written: its folder exists or can be created, and is
    writable; ``path`` is not a folder. Creates the folder; raises a one-line :class:`OutputPathError`."""
    if str(path).endswith(("/", os.sep)):  # Path() drops the separator: "newdir/" would be written as a file
        raise OutputPathError(f"{what} path {path} names a folder (it ends with {str(path)[-1]!r}); give a file name, "
                              f"e.g. {Path(path) / 'run.pt'}")
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{what} path {path} is a folder; give a file name, e.g. {path / 'run.pt'}")
    parent = path.parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputPathError(f"cannot write the {what} {path}: {existing} is a file, not a folder; choose "
                              f"another path")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the folder of the {what} {path} ({exc.strerror}); choose a "
                              f"writable path") from None
    try:  # a real write: permission bits alone do not show read-only mounts (or a root user's rights)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.probe", dir=parent)  # unique across processes
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"cannot write the {what} {path}: its folder {parent} is not writable "
                              f"({exc.strerror}); choose a writable path") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"cannot write the {what} {path}: the file is read-only; choose another path")
    return path

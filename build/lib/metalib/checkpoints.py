"""Checkpoint files: atomic writes, safe loads, the check that a resumed run is the same run, run folders
keyed by settings and code, and the snapshots kept for accuracy-against-time curves."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "check_same_run", "code_fingerprint", "run_dir", "load_snapshots"]


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` atomically: a temporary file in the same folder, then ``os.replace``; the temporary
    file is removed if the write fails (e.g. a full disk)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``: tensors and plain containers only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def check_same_run(checkpoint: str | os.PathLike, saved: dict | None, wanted: dict | None) -> None:
    """A resumed run must be the same run: compare the settings recorded in the checkpoint with this run's."""
    if saved is None or wanted is None:
        return
    keys = sorted(set(saved) | set(wanted))
    differ = [f"{k}: checkpoint {saved.get(k)!r}, now {wanted.get(k)!r}" for k in keys if saved.get(k) != wanted.get(k)]
    if differ:
        raise ValueError(f"checkpoint {checkpoint} belongs to a different run ({'; '.join(differ)}); resume with the "
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


def load_snapshots(checkpoint: str | os.PathLike) -> dict[int, dict]:
    """The meta-parameter snapshots ``meta_train(..., snapshot_every=N)`` kept next to ``checkpoint``:
    ``{step: state}`` with ``state["learner"]`` (a ``state_dict``), ``state["elapsed"]`` and ``state["cpu_s"]``."""
    folder = Path(checkpoint).with_name(Path(checkpoint).name + ".snapshots")
    return {int(p.stem[len("step"):]): load_checkpoint(p) for p in sorted(folder.glob("step*.pt"))}

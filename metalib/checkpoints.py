"""Checkpoint files: atomic writes, safe loads, and the check that a resumed run is the same run."""
from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "check_same_run"]


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

"""Small helpers every notebook uses: picking a device, seeding, and the two together (:func:`setup`)."""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["resolve_device", "seed_everything", "setup"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is visible; use device='cpu' or 'auto'")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (for code outside metalib's own seeded samplers); returns a torch Generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def setup(seed: int = 0, device: str | torch.device = "auto", cpu_threads: int | None = None) -> torch.device:
    """The first lines of every notebook: resolve ``device``, seed everything with ``seed``, and on a CPU use
    ``cpu_threads`` torch threads (``None``: torch's default). Returns the device."""
    dev = resolve_device(device)
    seed_everything(seed)
    if cpu_threads is not None and dev.type == "cpu":
        torch.set_num_threads(cpu_threads)
    return dev

"""Small helpers every notebook cell uses: picking a device and seeding."""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["resolve_device", "seed_everything"]


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

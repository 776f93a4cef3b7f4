"""Small helpers every notebook uses: picking a device, seeding, and the two together (:func:`setup`)."""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from .errors import UserError

__all__ = ["DEVICES", "DeviceError", "resolve_device", "seed_everything", "seeded", "setup"]

#: The device names :func:`resolve_device` accepts (``N`` a GPU index), for messages and CLI help.
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
_TYPES = ("cpu", "cuda", "mps")


class DeviceError(UserError, ValueError, RuntimeError):
    """An unknown device name, or a device this machine does not have (also a ``RuntimeError``,
    which is what an unavailable device raised before)."""


PROGRESS_ENV = "METALIB_PROGRESS"


def show_progress(progress: bool = True) -> bool:
    """Whether to draw a progress bar: ``progress``, unless ``METALIB_PROGRESS=0`` (set by the notebook runner,
    whose batch runs have no one watching and would store the bars in the executed notebooks)."""
    return progress and os.environ.get(PROGRESS_ENV, "1") != "0"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The one device resolver: ``"auto"`` -> CUDA when available, else CPU; ``"cpu"``, ``"cuda"``,
    ``"cuda:N"``, ``"mps"`` (any case, or a ``torch.device``) -> that device if this machine has it.

    Raises:
        DeviceError: an unknown name (the message lists the accepted ones), or a device that is not
            available here (the message says to use ``"cpu"`` or ``"auto"``).
    """
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = device if isinstance(device, torch.device) else torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in _TYPES:
        raise DeviceError(f"unknown device {str(device)!r}; use one of: {', '.join(DEVICES)}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {str(device)!r} was requested but no CUDA GPU is visible; "
                              "use device='cpu' or 'auto'")
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"device {str(device)!r} was requested but only {count} CUDA GPU(s) are visible "
                              f"(cuda:0..cuda:{count - 1}); use device='cuda' or 'auto'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {str(device)!r} was requested but MPS (Apple GPU) is not available; "
                          "use device='cpu' or 'auto'")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (for code outside metalib's own seeded samplers); returns a torch Generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Inside, torch's CPU generator starts from ``seed`` (unchanged when None); outside, it is as it was. For the
    layers a learner adds to the model it is given, so that a seed fixes their initialisation too."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def setup(seed: int = 0, device: str | torch.device = "auto", cpu_threads: int | None = None) -> torch.device:
    """The first lines of every notebook: resolve ``device``, seed everything with ``seed``, and on a CPU use
    ``cpu_threads`` torch threads (``None``: torch's default). Returns the device."""
    dev = resolve_device(device)
    seed_everything(seed)
    if cpu_threads is not None and dev.type == "cpu":
        torch.set_num_threads(cpu_threads)
    return dev

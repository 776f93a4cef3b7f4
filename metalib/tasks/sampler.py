"""Indexed, deterministic task families: task ``i`` of a sampler is a pure function of ``(seed, i)``."""
from __future__ import annotations

import operator
from typing import Sequence

import torch
from torch import Tensor

from ..errors import ArgumentError
from ..utils import resolve_device
from .batch import TaskBatch

__all__ = ["TaskSampler", "check_count", "task_seed", "task_generator"]

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def task_seed(seed: int, index: int) -> int:
    """Stable 64-bit seed of task ``index`` for sampler seed ``seed`` (same on every
    machine and Python process, unlike ``hash``)."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (index & _MASK64))


def task_generator(seed: int, index: int) -> torch.Generator:
    """A fresh CPU generator for task ``index`` of a sampler with ``seed``."""
    return torch.Generator().manual_seed(task_seed(seed, index))


def _as_int(value: object) -> int | None:
    """``value`` as a Python ``int`` (NumPy and torch integers included), or None for bools and non-integers."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_count(name: str, value: object) -> int:
    """``value`` as a positive ``int`` (NumPy integers accepted); else a ``ValueError`` naming ``name``."""
    count = _as_int(value)
    if count is None or count <= 0:
        raise ArgumentError(f"{name} must be a positive integer, got {value!r}")
    return count


class TaskSampler:
    """Base class: an indexed, deterministic family of tasks.

    Subclasses implement ``_make_batch(indices: list[int]) -> TaskBatch``. ``device`` is anything
    :func:`metalib.utils.resolve_device` accepts (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``).
    """

    seed: int
    device: torch.device

    def __init__(self, *, seed: int = 0, device: torch.device | str = "cpu") -> None:
        seed_int = _as_int(seed)
        if seed_int is None:
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.seed = seed_int
        self.device = resolve_device(device)

    def task(self, index: int) -> TaskBatch:
        """Task ``index`` as a batch of one."""
        return self.batch([index])

    def batch(self, indices: Sequence[int] | range | Tensor) -> TaskBatch:
        """The tasks with these indices, stacked in order, on the sampler's device."""
        if isinstance(indices, Tensor):
            indices = indices.flatten().tolist()
        given = list(indices)
        idx = [_as_int(i) for i in given]
        if not idx:
            raise ArgumentError("indices is empty; a TaskBatch needs at least one task")
        for i, given_i in zip(idx, given):
            if i is None or not 0 <= i < 2**63:
                raise ArgumentError(f"task indices must be integers in [0, 2**63), got {given_i!r}")
        return self._make_batch(idx)

    @staticmethod
    def step_indices(step: int, batch_size: int) -> range:
        """The tasks of training step ``step`` with meta-batch ``B``: ``step*B .. step*B+B-1``. The one place
        this rule is written: resuming and sharding a meta-batch over processes both rely on it."""
        batch_size = check_count("batch_size", batch_size)
        step_int = _as_int(step)
        if step_int is None or step_int < 0:
            raise ArgumentError(f"step must be a non-negative integer, got {step!r}")
        return range(step_int * batch_size, (step_int + 1) * batch_size)

    def sample(self, step: int, batch_size: int) -> TaskBatch:
        """Meta-batch of training step ``step``: the tasks :meth:`step_indices` names."""
        return self.batch(self.step_indices(step, batch_size))

    def _make_batch(self, indices: list[int]) -> TaskBatch:
        raise NotImplementedError

"""``TaskBatch``: a meta-batch of tasks, every tensor with the task as its first dimension."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["TaskBatch"]

@dataclass(eq=False)
class TaskBatch:
    """A batch of ``B`` tasks; every tensor's first dimension is the task.

    Classification: ``support_x`` ``[B, N*K, *x_shape]``, ``support_y`` int64 ``[B, N*K]``
    with labels ``0..N-1``; ``query_x`` ``[B, N*Q, *x_shape]``, ``query_y`` ``[B, N*Q]``.
    Regression: ``support_x``/``support_y`` ``[B, K, 1]`` float, same for the query.
    ``info`` holds per-task extras, each ``[B, ...]`` (e.g. ``class_ids``, ``amplitude``).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    info: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = self.support_x.shape[0] if self.support_x.ndim else None
        for name, t in self._named_tensors():
            if t.ndim == 0 or t.shape[0] != b:
                raise ValueError(
                    f"TaskBatch.{name} has shape {tuple(t.shape)} but support_x has "
                    f"batch size {b}; every tensor needs the task as its first dimension"
                )

    def _named_tensors(self) -> list[tuple[str, Tensor]]:
        named = [
            ("support_x", self.support_x),
            ("support_y", self.support_y),
            ("query_x", self.query_x),
            ("query_y", self.query_y),
        ]
        return named + [(f"info[{k!r}]", v) for k, v in self.info.items()]

    def _map(self, fn) -> TaskBatch:
        return TaskBatch(
            fn(self.support_x),
            fn(self.support_y),
            fn(self.query_x),
            fn(self.query_y),
            {k: fn(v) for k, v in self.info.items()},
        )

    @property
    def batch_size(self) -> int:
        return int(self.support_x.shape[0])

    def __len__(self) -> int:
        return self.batch_size

    @property
    def device(self) -> torch.device:
        return self.support_x.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None, *,
           non_blocking: bool = False) -> TaskBatch:
        """Copy of the batch on ``device`` (info included); ``dtype`` converts the floating-point tensors
        (e.g. ``batch.to(dtype=torch.float64)`` for gradient checks), labels and indices keep theirs."""
        def move(t: Tensor) -> Tensor:
            return t.to(device, dtype if dtype is not None and t.is_floating_point() else None,
                        non_blocking=non_blocking)
        return self._map(move)

    def __getitem__(self, idx: int | slice | Sequence[int] | Tensor) -> TaskBatch:
        """Select tasks; the batch dimension is always kept (an int gives ``B = 1``)."""
        if isinstance(idx, int):
            b = self.batch_size
            if not -b <= idx < b:
                raise IndexError(f"task {idx} out of range for a TaskBatch of {b} tasks")
            idx = slice(idx % b, idx % b + 1)
        elif not isinstance(idx, (slice, Tensor)):
            idx = torch.as_tensor(list(idx), dtype=torch.long)
        return self._map(lambda t: t[idx])

    @classmethod
    def cat(cls, batches: Sequence[TaskBatch]) -> TaskBatch:
        """Concatenate batches along the task dimension (same info keys required)."""
        if not batches:
            raise ValueError("TaskBatch.cat needs at least one batch")
        keys = set(batches[0].info)
        for i, b in enumerate(batches[1:], 1):
            if set(b.info) != keys:
                raise ValueError(
                    f"TaskBatch.cat: batch {i} has info keys {sorted(b.info)}, "
                    f"batch 0 has {sorted(keys)}"
                )
        return cls(
            torch.cat([b.support_x for b in batches]),
            torch.cat([b.support_y for b in batches]),
            torch.cat([b.query_x for b in batches]),
            torch.cat([b.query_y for b in batches]),
            {k: torch.cat([b.info[k] for b in batches]) for k in batches[0].info},
        )

    def equal(self, other: TaskBatch) -> bool:
        """True when both batches hold exactly the same tensors (info included)."""
        mine, theirs = self._named_tensors(), other._named_tensors()
        return [n for n, _ in mine] == [n for n, _ in theirs] and all(
            a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
            for (_, a), (_, b) in zip(mine, theirs)
        )

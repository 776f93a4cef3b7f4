"""Episodes (tasks) for meta-learning: N-way K-shot classification and sinusoid regression.

Determinism: every task has an integer index, and task ``i`` of a sampler is a pure
function of ``(seed, i)``: it is drawn from its own ``torch.Generator`` seeded with
:func:`task_seed`. Training step ``t`` with meta-batch ``B`` uses tasks
``t*B .. t*B+B-1`` (:meth:`TaskSampler.sample`), so a run can be resumed at any step and
a meta-batch can be split across processes in any way without changing the tasks.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from .data.base import ClassSplit

__all__ = [
    "EpisodeSampler",
    "SinusoidTasks",
    "TaskBatch",
    "TaskSampler",
    "task_generator",
    "task_seed",
]

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


# ------------------------------------------------------------------------- TaskBatch


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


# ---------------------------------------------------------------------- base sampler


def check_count(name: str, value: object) -> int:
    """``value`` as a positive ``int`` (NumPy integers accepted); else a ``ValueError`` naming ``name``."""
    try:
        count = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        count = None
    if count is None or count <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return count


class TaskSampler:
    """Base class: an indexed, deterministic family of tasks.

    Subclasses implement ``_make_batch(indices: list[int]) -> TaskBatch``.
    """

    seed: int
    device: torch.device

    def __init__(self, *, seed: int = 0, device: torch.device | str = "cpu") -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.device = torch.device(device)

    def task(self, index: int) -> TaskBatch:
        """Task ``index`` as a batch of one."""
        return self.batch([index])

    def batch(self, indices: Sequence[int] | range | Tensor) -> TaskBatch:
        """The tasks with these indices, stacked in order, on the sampler's device."""
        if isinstance(indices, Tensor):
            indices = indices.flatten().tolist()
        idx = list(indices)
        if not idx:
            raise ValueError("indices is empty; a TaskBatch needs at least one task")
        for i in idx:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 2**63:
                raise ValueError(f"task indices must be integers in [0, 2**63), got {i!r}")
        return self._make_batch(idx)

    @staticmethod
    def step_indices(step: int, batch_size: int) -> range:
        """The tasks of training step ``step`` with meta-batch ``B``: ``step*B .. step*B+B-1``. The one place
        this rule is written: resuming and sharding a meta-batch over processes both rely on it."""
        batch_size = check_count("batch_size", batch_size)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        return range(step * batch_size, (step + 1) * batch_size)

    def sample(self, step: int, batch_size: int) -> TaskBatch:
        """Meta-batch of training step ``step``: the tasks :meth:`step_indices` names."""
        return self.batch(self.step_indices(step, batch_size))

    def _make_batch(self, indices: list[int]) -> TaskBatch:
        raise NotImplementedError


# -------------------------------------------------------------------- classification


class EpisodeSampler(TaskSampler):
    """N-way K-shot classification episodes with Q queries per class.

    Each episode picks ``ways`` distinct classes of the split and, per class,
    ``shots + queries`` distinct drawings: the first ``shots`` form the support set, the
    rest the query set (so they never share a drawing). Labels are ``0..N-1`` in the order
    of ``info["class_ids"]``; support and query are grouped by label
    (``support_y = [0]*K + [1]*K + ...``).

    Images come out float32 ``[.., C, H, W]`` (``C = 1`` for ``[classes, drawings, H, W]``
    input); uint8 input is divided by 255, float input is used as is. The images are moved
    to ``device`` once at construction and episodes are gathered there with index tensors.

    ``info``: ``class_ids`` ``[B, N]`` (class indices within the split),
    ``support_drawing_ids`` ``[B, N*K]``, ``query_drawing_ids`` ``[B, N*Q]``,
    ``task_index`` ``[B]``.
    """

    def __init__(
        self,
        split_or_images: ClassSplit | Tensor,
        ways: int,
        shots: int,
        queries: int,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(seed=seed, device=device)
        if isinstance(split_or_images, ClassSplit):
            images, where = split_or_images.images, f"split {split_or_images.name!r} has"
        elif isinstance(split_or_images, Tensor):
            images, where = split_or_images, "the given images have"
        else:
            raise TypeError(
                f"expected a ClassSplit or a Tensor [classes, drawings, H, W], "
                f"got {type(split_or_images).__name__}"
            )
        if images.ndim == 4:
            images = images.unsqueeze(2)
        elif images.ndim != 5:
            raise ValueError(
                f"images must be [classes, drawings, H, W] or [classes, drawings, channels, H, W]; "
                f"got shape {tuple(images.shape)} (rank {images.ndim})"
            )
        if images.dtype == torch.uint8:
            self._from_uint8 = True
        elif images.is_floating_point():
            images, self._from_uint8 = images.float(), False
        else:
            raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
        self.ways = check_count("ways", ways)
        self.shots = check_count("shots", shots)
        self.queries = check_count("queries", queries)
        self.num_classes, self.drawings = int(images.shape[0]), int(images.shape[1])
        if ways > self.num_classes:
            raise ValueError(
                f"{ways}-way needs {ways} classes but {where} {self.num_classes}; "
                "lower ways or use a bigger split"
            )
        if shots + queries > self.drawings:
            raise ValueError(
                f"{shots} shots + {queries} queries = {shots + queries} > {self.drawings} "
                "drawings per class; lower shots or queries"
            )
        self.x_shape = tuple(images.shape[2:])
        self.images = images.to(self.device)  # kept in its compact dtype, converted per episode

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({self.ways}-way {self.shots}-shot {self.queries}-query, "
            f"{self.num_classes} classes x {self.drawings}, seed={self.seed}, device={self.device})"
        )

    def _draw(self, index: int) -> tuple[Tensor, Tensor]:
        g = task_generator(self.seed, index)
        classes = torch.randperm(self.num_classes, generator=g)[: self.ways]
        drawings = torch.rand(self.ways, self.drawings, generator=g).argsort(dim=1)
        return classes, drawings[:, : self.shots + self.queries]

    def _gather(self, classes: Tensor, drawings: Tensor) -> Tensor:
        """Images ``[B, N*D, *x_shape]`` of ``classes`` ``[B, N]`` x ``drawings`` ``[B, N, D]``."""
        x = self.images[classes[:, :, None], drawings]  # [B, N, D, *x_shape], contiguous
        x = x / 255 if self._from_uint8 else x  # uint8 / int -> float32 in one pass
        return x.view(x.shape[0], -1, *self.x_shape)

    def _make_batch(self, indices: list[int]) -> TaskBatch:
        n, k, q, dev = self.ways, self.shots, self.queries, self.device
        drawn = [self._draw(i) for i in indices]
        classes = torch.stack([c for c, _ in drawn]).to(dev)  # [B, N]
        drawings = torch.stack([d for _, d in drawn]).to(dev)  # [B, N, K+Q]
        b = len(indices)
        labels = torch.arange(n, device=dev)
        return TaskBatch(
            support_x=self._gather(classes, drawings[:, :, :k]),
            support_y=labels.repeat_interleave(k).expand(b, -1).contiguous(),
            query_x=self._gather(classes, drawings[:, :, k:]),
            query_y=labels.repeat_interleave(q).expand(b, -1).contiguous(),
            info={
                "class_ids": classes,
                "support_drawing_ids": drawings[:, :, :k].reshape(b, n * k),
                "query_drawing_ids": drawings[:, :, k:].reshape(b, n * q),
                "task_index": torch.tensor(indices, dtype=torch.long, device=dev),
            },
        )


# ------------------------------------------------------------------------ regression


def _check_range(name: str, value: Sequence[float], *, allow_equal: bool) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or (lo == hi and not allow_equal):
        rel = "<=" if allow_equal else "<"
        raise ValueError(f"{name} must satisfy finite low {rel} high, got ({lo}, {hi})")
    return lo, hi


class SinusoidTasks(TaskSampler):
    """The MAML sinusoid regression family: ``y = amplitude * sin(x - phase)``.

    Per task: amplitude ~ U[0.1, 5], phase ~ U[0, pi], and ``shots + queries`` inputs
    x ~ U[-5, 5] (the first ``shots`` are the support set). ``queries`` defaults to
    ``shots``. Batches: x and y ``[B, K, 1]`` float32; ``info["amplitude"]`` and
    ``info["phase"]`` ``[B]``, ``info["task_index"]`` ``[B]``.
    """

    def __init__(
        self,
        shots: int,
        queries: int | None = None,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        super().__init__(seed=seed, device=device)
        self.shots = check_count("shots", shots)
        self.queries = check_count("queries", shots if queries is None else queries)
        self.amplitude = _check_range("amplitude", amplitude, allow_equal=True)
        self.phase = _check_range("phase", phase, allow_equal=True)
        self.x_range = _check_range("x_range", x_range, allow_equal=False)

    def __repr__(self) -> str:
        return (
            f"SinusoidTasks(shots={self.shots}, queries={self.queries}, amplitude={self.amplitude}, "
            f"phase={self.phase}, x_range={self.x_range}, seed={self.seed}, device={self.device})"
        )

    @staticmethod
    def sinusoid(x: Tensor, amplitude: Tensor | float, phase: Tensor | float) -> Tensor:
        """``amplitude * sin(x - phase)``; ``[B]`` amplitude/phase broadcast over x ``[B, ...]``."""
        if isinstance(amplitude, Tensor) and amplitude.ndim == 1 and x.ndim > 1:
            amplitude = amplitude.view(-1, *[1] * (x.ndim - 1))
        if isinstance(phase, Tensor) and phase.ndim == 1 and x.ndim > 1:
            phase = phase.view(-1, *[1] * (x.ndim - 1))
        return amplitude * torch.sin(x - phase)

    def true_curve(self, tasks: TaskBatch, num_points: int = 200) -> tuple[Tensor, Tensor]:
        """Dense grid of the true functions of ``tasks`` for plotting: x, y ``[B, num_points, 1]``."""
        check_count("num_points", num_points)
        amp, ph = tasks.info["amplitude"], tasks.info["phase"]
        grid = torch.linspace(*self.x_range, num_points, device=amp.device)
        x = grid.view(1, -1, 1).expand(len(tasks), -1, -1)
        return x, self.sinusoid(x, amp, ph)

    def task_with(self, amplitude: float, phase: float, *, seed: int = 0, num_points: int = 200) -> TaskBatch:
        """One chosen task ``amplitude * sin(x - phase)``: ``shots`` support points drawn uniformly from
        ``x_range`` (seeded) and a dense grid of ``num_points`` as its query set (e.g. for plotting)."""
        g = torch.Generator().manual_seed(seed)
        lo, hi = self.x_range
        sx = lo + (hi - lo) * torch.rand(1, self.shots, 1, generator=g)
        qx = torch.linspace(lo, hi, check_count("num_points", num_points)).view(1, -1, 1)
        amp, ph = torch.tensor([float(amplitude)]), torch.tensor([float(phase)])
        batch = TaskBatch(sx, self.sinusoid(sx, amp, ph), qx, self.sinusoid(qx, amp, ph), {"amplitude": amp, "phase": ph})
        return batch.to(self.device)

    def _make_batch(self, indices: list[int]) -> TaskBatch:
        k, q = self.shots, self.queries
        (a_lo, a_hi), (p_lo, p_hi), (x_lo, x_hi) = self.amplitude, self.phase, self.x_range
        u = torch.stack([torch.rand(2 + k + q, generator=task_generator(self.seed, i)) for i in indices])
        amp = a_lo + (a_hi - a_lo) * u[:, 0]
        ph = p_lo + (p_hi - p_lo) * u[:, 1]
        x = (x_lo + (x_hi - x_lo) * u[:, 2:]).unsqueeze(-1)  # [B, K+Q, 1]
        y = self.sinusoid(x, amp, ph)
        dev = self.device
        return TaskBatch(
            support_x=x[:, :k].contiguous().to(dev),
            support_y=y[:, :k].contiguous().to(dev),
            query_x=x[:, k:].contiguous().to(dev),
            query_y=y[:, k:].contiguous().to(dev),
            info={
                "amplitude": amp.to(dev),
                "phase": ph.to(dev),
                "task_index": torch.tensor(indices, dtype=torch.long, device=dev),
            },
        )

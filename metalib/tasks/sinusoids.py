"""The MAML sinusoid regression family."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ..errors import ArgumentError
from .batch import TaskBatch
from .sampler import TaskSampler, check_count, task_generator

__all__ = ["SinusoidTasks"]

def _check_range(name: str, value: Sequence[float], *, allow_equal: bool) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ArgumentError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or (lo == hi and not allow_equal):
        rel = "<=" if allow_equal else "<"
        raise ArgumentError(f"{name} must satisfy finite low {rel} high, got ({lo}, {hi})")
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

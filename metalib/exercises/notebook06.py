"""The exercises of notebook 06 (scaling the inner loop): their tests, with the notebook's objects passed in."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..inner import resolve_strategy
from ..models import conv4, mlp
from ..tasks import TaskBatch

__all__ = ["verify_06_1", "verify_06_2", "verify_06_3"]


def verify_06_1(engines: Mapping[tuple[str, str], str]) -> tuple[bool, str]:
    """The engine ``strategy="auto"`` picks for each (model, device) pair."""
    models = {"conv4": conv4(5), "mlp": mlp(), "plain": nn.Sequential(nn.Flatten(), nn.Linear(784, 5))}
    keys = [("conv4", "cpu"), ("conv4", "cuda"), ("mlp", "cpu"), ("plain", "cpu"), ("plain", "cuda")]
    wrong = [k for k in keys if engines.get(k) != resolve_strategy("auto", torch.device(k[1]), models[k[0]])]
    return not wrong, f"not the engine that strategy='auto' picks for {wrong}"


def verify_06_2(fn: Callable[[Tensor, Tensor, Tensor], Tensor]) -> tuple[bool, str]:
    """``fn(x, w, b)``: every task's 3x3 convolution in one call, equal to a per-task loop."""
    g = torch.Generator().manual_seed(0)
    for B in (3, 1):
        x, w, b = (torch.randn(*shape, generator=g, dtype=torch.float64)
                   for shape in [(B, 4, 2, 6, 6), (B, 5, 2, 3, 3), (B, 5)])
        loop = torch.stack([F.conv2d(x[i], w[i], b[i], padding=1) for i in range(B)])
        yours = fn(x, w, b)
        if yours.shape != loop.shape or not torch.allclose(yours, loop):
            return False, f"with B = {B} tasks your result differs from the per-task loop"
    return True, ""


def verify_06_3(counts: Sequence[int], *, model: nn.Module, batch: TaskBatch) -> tuple[bool, str]:
    """The forward convolutions of one meta-step with 2 inner steps: naive loop and batched engine."""
    layers = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    expected = (len(batch.support_x) * 3 * layers, 3 * layers)  # B x (k + 1) x layers and (k + 1) x layers
    return tuple(counts) == expected, "count the forward convolutions of both, e.g. with the counter in the hint"

"""The exercises of notebook 03 (multi-task meta-learning): their tests, with the notebook's objects passed in."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..algorithms import make_learner
from ..evaluate import evaluate
from ..tasks import SinusoidTasks

__all__ = ["verify_03_1", "verify_03_2", "verify_03_3"]


def verify_03_1(lr: float, *, model: nn.Module, sampler: SinusoidTasks, n_tasks: int) -> tuple[bool, str]:
    """The inner learning rate with (within 10%) the lowest 1-step query MSE of the trained MAML ``model``."""
    def mse(a: float) -> float:  # mean query MSE of the trained MAML after one step of size a
        r = evaluate(make_learner("maml", model, problem="regression", inner_lr=a), sampler, n_tasks=n_tasks, steps=1,
                     batch_size=n_tasks)
        return r.mean if math.isfinite(r.mean) else math.inf
    best, yours = min(mse(a) for a in torch.logspace(-3, -1, 9).tolist()), mse(lr)
    return yours <= 1.1 * best, f"1-step MSE {yours:.3f} at lr = {lr}; the sweep's best is {best:.3f}"


def verify_03_2(value: float, *, model: nn.Module, sampler: SinusoidTasks, n_tasks: int) -> tuple[bool, str]:
    """The lowest 10-step query MSE of the pre-trained ``model`` over five fine-tuning step sizes."""
    mses = [evaluate(make_learner("pretrain", model, problem="regression", inner_lr=a), sampler, n_tasks=n_tasks,
                     steps=10, batch_size=n_tasks).mean for a in (0.001, 0.003, 0.01, 0.02, 0.03)]
    best = min(m for m in mses if math.isfinite(m))
    return abs(value - best) <= 0.05 * best, "not the lowest 10-step MSE over those step sizes"


def verify_03_3(mse: float) -> tuple[bool, str]:
    """The MSE of the mean function of sinusoids with phases in [0, 2 pi] (about 4.2)."""
    return 3.9 <= mse <= 4.6, f"{mse:.2f} is not the MSE of the mean of those curves"

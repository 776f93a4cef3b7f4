"""The exercises of notebook 04 (MAML as bilevel optimisation): their tests, with the notebook's objects passed in."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..algorithms import make_learner
from ..evaluate import adaptation_curve
from ..models import conv4
from ..params import Params
from ..profiling import measure
from ..tasks import TaskBatch

__all__ = ["verify_04_1", "verify_04_2", "verify_04_3"]


def verify_04_1(fn: Callable[[nn.Module, Params, TaskBatch, float], Params], *, batch: TaskBatch, ways: int,
                inner_lr: float, seed: int, device: torch.device) -> tuple[bool, str]:
    """``fn(model, params, batch, alpha)``: MAML's one-step meta-gradient by a Hessian-vector product, in float64."""
    model64 = conv4(ways, hidden=8, seed=seed, device=device).double()
    reference, _ = make_learner("maml", model64, inner_lr=inner_lr, inner_steps=1).meta_gradient(batch)
    yours = fn(model64, dict(model64.named_parameters()), batch, inner_lr)
    error = max((yours[k] - g).abs().max().item() for k, g in reference.items())
    return error < 1e-8, f"max |yours - metalib| = {error:.1e} in float64"


def verify_04_2(lr: float, *, init: nn.Module, batch: TaskBatch) -> tuple[bool, str]:
    """The inner learning rate with (within 1.5 points) the highest 1-step accuracy of the trained ``init``."""
    def accuracy(a: float) -> float:  # mean query accuracy (%) of the trained MAML after one step of size a
        return 100 * adaptation_curve(make_learner("maml", init, inner_lr=a), batch, [1]).double().mean().item()
    best, yours = max(accuracy(a) for a in np.logspace(-1.5, 0.5, 9)), accuracy(lr)
    return yours >= best - 1.5, f"{yours:.1f}% at lr = {lr}; the sweep's best is {best:.1f}%"


def verify_04_3(pair: Sequence[float], *, batch: TaskBatch, ways: int, hidden: int, inner_lr: float, seed: int,
                device: torch.device) -> tuple[bool, str]:
    """The graph MiB of MAML's and first-order MAML's meta-step with 8 inner steps on 4 tasks, each within 10%."""
    measured = []
    for name in ("maml", "fomaml"):
        learner = make_learner(name, conv4(ways, hidden=hidden, seed=seed, device=device), inner_lr=inner_lr,
                               inner_steps=8)
        measured.append(measure(lambda: learner.meta_gradient(batch[:4]), device)[1].graph_mib)
    ok = len(pair) == 2 and all(abs(p - m) <= 0.1 * m for p, m in zip(pair, measured))
    return ok, f"measured {measured[0]:.1f} MiB (MAML) and {measured[1]:.1f} MiB (first-order) at k = 8"

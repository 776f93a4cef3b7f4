"""The exercises of notebook 00 (what meta-learning is): their tests, with the notebook's objects passed in."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ..inner import InnerConfig, adapt
from ..params import Params
from ..tasks import SinusoidTasks

__all__ = ["verify_00_1", "verify_00_2", "verify_00_3"]


def verify_00_1(letters: str) -> tuple[bool, str]:
    """Which of the five procedures learn (L), tune (T), ... : the letters "MFLTL"."""
    letters = str(letters).upper().replace(" ", "")
    right = sum(a == b for a, b in zip(letters, "MFLTL"))
    return letters == "MFLTL", f"{right} of the 5 letters are right"


def verify_00_2(k: int, *, level3_mse: float, model: nn.Module, params: Params, cfg: InnerConfig,
                predict: Callable[[nn.Module | Params, Tensor], Tensor], n_tasks: int, seed: int,
                device: torch.device) -> tuple[bool, str]:
    """The smallest K (points per task) at which level 2 (``cfg``'s training from ``params``) reaches level 3's
    MSE ``level3_mse``; ``predict(adapted, x)`` gives the adapted model's predictions."""
    for K in (10, 20, 40, 80, 160):  # level 2 on K points per task, as in section 2
        batch = SinusoidTasks(K, queries=100, seed=seed + 1000, device=device).batch(range(n_tasks))
        mse = ((predict(adapt(model, params, batch, cfg), batch.query_x) - batch.query_y) ** 2).mean().item()
        if mse <= level3_mse:
            break
    need = K if mse <= level3_mse else math.inf
    if k < need:
        return False, f"with K = {k} level 2 does not reach level 3's MSE {level3_mse:.3f}"
    return k == need, f"a smaller K already reaches level 3's MSE {level3_mse:.3f}"


def verify_00_3(slope: float, *, finetune_loss: Callable[..., Tensor], lr0: float,
                device: torch.device) -> tuple[bool, str]:
    """The hypergradient dL_val / dlog(alpha) of ``finetune_loss(log_lr, differentiable=True)`` at ``lr0``."""
    log_lr = torch.tensor(math.log(lr0), device=device, requires_grad=True)
    (reference,) = torch.autograd.grad(finetune_loss(log_lr, differentiable=True), [log_lr])
    sign = " (look at its sign)" if slope * reference.item() < 0 else ""
    return abs(slope - reference.item()) <= 0.05 * abs(reference.item()) + 1e-3, f"not the hypergradient at tune_lr0{sign}"

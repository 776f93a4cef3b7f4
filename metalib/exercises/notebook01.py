"""The exercises of notebook 01 (single-task meta-learning): their tests, with the notebook's objects passed in."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..params import Params
from ..profiling import measure
from ..single_task import Examples, hypergradient, make_hyper

__all__ = ["verify_01_1", "verify_01_2", "verify_01_3"]

Loss = Callable[[Tensor, Tensor], Tensor]


def verify_01_1(lr: float, *, model: nn.Module, params: Params, train_data: Examples, val_data: Examples, steps: int,
                loss_fn: Loss) -> tuple[bool, str]:
    """A learning rate where dL_val / dlog(lr) of a ``steps``-step run goes from negative to positive."""
    def slope(a: float) -> float:  # dL_val / dlog(lr) of a T-step run at learning rate a
        return hypergradient(model, params, make_hyper(params, lr=a), train_data, val_data, steps,
                             loss_fn=loss_fn)[1]["log_lr"].item()
    below, above = slope(lr / 1.5), slope(lr * 1.5)
    return below < 0 < above, f"slope {below:+.3f} at lr / 1.5 and {above:+.3f} at 1.5 lr: no - to + crossing near {lr}"


def verify_01_2(mib: float, *, model: nn.Module, params: Params, lr: float, train_data: Examples, val_data: Examples,
                loss_fn: Loss, device: torch.device) -> tuple[bool, str]:
    """The MiB saved for backward by one hypergradient through T = 400 steps, within 10%."""
    hyper = make_hyper(params, lr=lr)
    _, used = measure(lambda: hypergradient(model, params, hyper, train_data, val_data, 400, loss_fn=loss_fn), device)
    return abs(mib - used.graph_mib) <= 0.1 * used.graph_mib, f"measured {used.graph_mib:.1f} MiB at T = 400"


def verify_01_3(lr: float, *, model: nn.Module, params: Params, train_data: Examples, val_data: Examples, steps: int,
                loss_fn: Loss) -> tuple[bool, str]:
    """Of 0.01, 0.1 and 1.0, the learning rate where the first-order hypergradient is furthest from the full one."""
    def relative_error(a: float) -> float:  # |first-order - full| / |full| for dL_val / dlog(lr) at lr = a
        full, first = (hypergradient(model, params, make_hyper(params, lr=a), train_data, val_data, steps,
                                     loss_fn=loss_fn, create_graph=exact)[1]["log_lr"].item() for exact in (True, False))
        return abs(first - full) / abs(full)
    errors = {a: relative_error(a) for a in (0.01, 0.1, 1.0)}
    return max(errors, key=errors.get) == lr, (f"at lr = {lr} the first-order value is off by "
                                               f"{errors.get(lr, float('nan')):.0%}; another is off by more")

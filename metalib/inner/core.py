"""The inner loop, as notebook 04 shows it: SGD steps on each task's support set.

Every gradient-based algorithm in metalib is an :class:`InnerConfig` of this loop:

* ``steps`` SGD steps on each task's support loss, starting from the shared ``params``;
* ``lr`` a scalar, or per-parameter tensors that Meta-SGD learns;
* ``first_order=True`` treats the inner gradients as constants (FOMAML, Reptile);
* ``adapt`` names the parameters that move (all by default; the head for ANIL);
* ``proximal`` (``lambda``) adds ``lambda / 2 * |phi - theta|^2`` to the support loss, pulling each task's
  weights ``phi`` towards the shared start ``theta`` (iMAML's regularised inner problem).

:func:`adapt` and :func:`task_losses` take a whole meta-batch (a :class:`~metalib.tasks.TaskBatch`)
and hand it to an *engine* (:mod:`metalib.inner.select`) that decides how the tasks are executed:
all at once, one by one, or over threads. Every engine runs :func:`inner_sgd` (or its ``torch.func``
twin) and computes the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from ..problems import CLASSIFICATION, Problem
from ..tasks import TaskBatch
from ..types import Params

__all__ = ["InnerConfig", "sgd_step", "with_proximal", "inner_sgd", "adapt", "task_losses", "STRATEGIES"]

Strategy = Literal["auto", "batched", "vmap", "loop", "threads"]
STRATEGIES = ("auto", "batched", "vmap", "loop", "threads")
LearningRate = float | Tensor | Mapping[str, Tensor]


@dataclass(frozen=True)
class InnerConfig:
    """How a task is adapted. Algorithms are configurations of this, not copies of the loop."""

    steps: int = 1
    lr: float = 0.4
    first_order: bool = False
    adapt: tuple[str, ...] | None = None  # parameter names that move; None = all
    strategy: Strategy = "auto"           # the engine; "auto" picks one by device and model
    problem: Problem = field(default=CLASSIFICATION)
    proximal: float = 0.0                 # lambda of the proximal term; 0 = plain support loss

    def __post_init__(self):
        if self.steps < 0:
            raise ArgumentError(f"inner steps must be >= 0, got {self.steps}")
        if not self.proximal >= 0:
            raise ArgumentError(f"the proximal weight must be >= 0, got {self.proximal}")
        if self.strategy not in STRATEGIES:
            raise ArgumentError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")


def sgd_step(params: Params, grads: Mapping[str, Tensor], lr: LearningRate) -> Params:
    """One SGD step ``w - lr * g`` for every parameter; ``lr`` is a number or one tensor per parameter."""
    if isinstance(lr, (int, float)):
        return {k: torch.add(w, grads[k], alpha=-lr) for k, w in params.items()}  # one kernel, not two
    return {k: w - (lr[k] if isinstance(lr, Mapping) else lr) * grads[k] for k, w in params.items()}


def with_proximal(loss: Callable[[Params], Tensor], start: Params, weight: float) -> Callable[[Params], Tensor]:
    """``loss(p) + weight / 2 * sum |p - start|^2`` (over every tensor of ``p``; per-task slices of a batched
    ``p`` each get their own term); ``loss`` itself when ``weight`` is 0."""
    if not weight:
        return loss
    return lambda p: loss(p) + 0.5 * weight * sum((p[k] - start[k]).pow(2).sum() for k in p)


def inner_sgd(loss: Callable[[Params], Tensor], params: Params, lr: LearningRate, steps: int,
              first_order: bool = False, proximal: float = 0.0) -> Params:
    """``steps`` SGD steps on ``loss(params)`` (plus the ``proximal`` term around the starting ``params``). The
    graph of each step is kept (``create_graph``) unless ``first_order``, so the result is differentiable with
    respect to the starting ``params`` and ``lr``."""
    loss = with_proximal(loss, params, proximal)
    for _ in range(steps):
        with torch.enable_grad():
            params = {k: w if w.requires_grad else w.detach().requires_grad_() for k, w in params.items()}
            grads = torch.autograd.grad(loss(params), list(params.values()), create_graph=not first_order)
        params = sgd_step(params, dict(zip(params, grads)), lr)
    return params


def adapt(model: nn.Module, params: Params, batch: TaskBatch, cfg: InnerConfig,
          lrs: Mapping[str, Tensor] | None = None) -> Params:
    """Adapt every task of ``batch`` on its support set; returns parameters ``[B, ...]`` (the ones that do
    not adapt are broadcast)."""
    from .select import select_engine
    engine = select_engine(cfg.strategy, batch.device, model)
    return engine.adapt(model, params, _lr(lrs, cfg), batch.support_x, batch.support_y, cfg, adapted_names(params, cfg))


def task_losses(model: nn.Module, params: Params, batch: TaskBatch, cfg: InnerConfig,
                lrs: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Adapt each task on its support set and evaluate it on its query set.

    Returns ``(losses, scores)``, each ``[B]``: the query loss (differentiable with respect to
    ``params`` and ``lrs`` through the unrolled inner loop; only through the final step when
    first-order) and the query score (accuracy or MSE, detached).
    """
    from .select import select_engine
    engine = select_engine(cfg.strategy, batch.device, model)
    return engine.task_losses(model, params, _lr(lrs, cfg), batch, cfg, adapted_names(params, cfg))


def adapted_names(params: Mapping[str, Tensor], cfg: InnerConfig) -> list[str]:
    """The parameters that move in the inner loop, checked against the model's."""
    if cfg.adapt is None:
        return list(params)
    unknown = [n for n in cfg.adapt if n not in params]
    if unknown:
        raise ArgumentError(f"cannot adapt unknown parameters {unknown}; the model has {list(params)}")
    return list(cfg.adapt)


def _lr(lrs: Mapping[str, Tensor] | None, cfg: InnerConfig) -> LearningRate:
    return lrs if lrs is not None else cfg.lr

"""Which engine executes a meta-batch: a table by device and model capability, measured (BENCHMARKS.md).

==============  ==========================================================================
``batched``     all tasks in one pass of ``forward_tasks`` (grouped convolutions); the GPU default
``threads``     tasks over worker threads, one intra-op thread each; the CPU default for conv nets
``loop``        tasks one after another; the reference, and the CPU default for plain models
``vmap``        ``torch.func.vmap`` over tasks; any model; the GPU default for plain models
==============  ==========================================================================

All four compute the same numbers (``tests/test_inner.py`` checks them against each other, a naive
loop and finite differences). On CPUs activations of task-batched conv nets are channels-last.
"""
from __future__ import annotations

from typing import Mapping, Protocol

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from ..models import TaskBatchedModel
from ..tasks import TaskBatch
from ..params import Params
from .batched import BatchedEngine
from .core import STRATEGIES, InnerConfig, LearningRate
from .adaptation import forward
from .per_task import PerTaskEngine
from .vmap import VmapEngine

__all__ = ["Engine", "AUTO", "model_kind", "resolve_strategy", "select_engine", "forward_adapted", "adapt", "task_losses",
           "adapted_names"]


class Engine(Protocol):
    """How a meta-batch is executed; every engine computes the same numbers."""

    name: str

    def adapt(self, model: nn.Module, params: Params, lr: LearningRate, support_x: Tensor, support_y: Tensor,
              cfg: InnerConfig, names: list[str]) -> Params: ...

    def task_losses(self, model: nn.Module, params: Params, lr: LearningRate, batch: TaskBatch, cfg: InnerConfig,
                    names: list[str]) -> tuple[Tensor, Tensor]: ...


# (device type, model kind) -> engine. On CPUs grouped convolutions measured slower than per-task ones,
# so task-batched conv nets run their tasks over threads there (BENCHMARKS.md, notebook 06).
AUTO = {
    ("cpu", "task-batched conv"): "threads",
    ("cpu", "task-batched"): "batched",
    ("cpu", "plain"): "loop",
    ("accelerator", "task-batched conv"): "batched",
    ("accelerator", "task-batched"): "batched",
    ("accelerator", "plain"): "vmap",
}
_NEEDS_TASK_BATCHED = ("batched", "threads")


def model_kind(model: nn.Module) -> str:
    """``"task-batched conv"``, ``"task-batched"`` (a :class:`~metalib.models.TaskBatchedModel`) or ``"plain"``."""
    if not isinstance(model, TaskBatchedModel):
        return "plain"
    return "task-batched conv" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "task-batched"


def resolve_strategy(strategy: str, device: torch.device, model: nn.Module) -> str:
    """The engine's name: ``strategy`` itself (checked against the model), or the ``AUTO`` table's choice."""
    if strategy not in STRATEGIES:
        raise ArgumentError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    kind = model_kind(model)
    if strategy in _NEEDS_TASK_BATCHED and kind == "plain":
        raise ArgumentError(f"strategy {strategy!r} needs a model with forward_tasks() (metalib.models.TaskBatchedModel); "
                         f"{type(model).__name__} has none (use 'vmap' or 'loop')")
    if strategy != "auto":
        return strategy
    return AUTO[("cpu" if device.type == "cpu" else "accelerator", kind)]


def channels_last(device: torch.device) -> bool:
    """NHWC activations measured faster on CPUs (oneDNN); GPUs keep NCHW."""
    return device.type == "cpu"


def select_engine(strategy: str, device: torch.device, model: nn.Module) -> Engine:
    """The engine that runs ``model`` on ``device`` for ``strategy`` (``"auto"``: the ``AUTO`` table)."""
    name = resolve_strategy(strategy, device, model)
    cl = channels_last(device)
    if name == "batched":
        return BatchedEngine(cl)
    if name == "vmap":
        return VmapEngine()
    return PerTaskEngine(name, parallel=name == "threads", channels_last=cl)


def forward_adapted(model: nn.Module, params: Params, x: Tensor, second_order: bool = False) -> Tensor:
    """Outputs ``[B, n, ...]`` on inputs ``x`` ``[B, n, ...]`` of per-task parameters (``[B, *shape]``, as
    :func:`adapt` returns them) or shared ones (the parameter's own shape), e.g. to score adapted models.
    ``second_order``: the speed hint that this pass will be differentiated twice (Hessian-vector products)."""
    if isinstance(model, TaskBatchedModel):
        return model.forward_tasks(params, x, second_order, channels_last(x.device))
    own = dict(model.named_parameters())
    per_task = {k for k, v in params.items() if v.dim() == own[k].dim() + 1}
    return torch.stack([forward(model, {k: v[i] if k in per_task else v for k, v in params.items()}, xi)
                        for i, xi in enumerate(x)])


def adapt(model: nn.Module, params: Params, batch: TaskBatch, cfg: InnerConfig,
          lrs: Mapping[str, Tensor] | None = None) -> Params:
    """Adapt every task of ``batch`` on its support set; returns parameters ``[B, ...]`` (the ones that do
    not adapt are broadcast)."""
    engine = select_engine(cfg.strategy, batch.device, model)
    return engine.adapt(model, params, _lr(lrs, cfg), batch.support_x, batch.support_y, cfg, adapted_names(params, cfg))


def task_losses(model: nn.Module, params: Params, batch: TaskBatch, cfg: InnerConfig,
                lrs: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Adapt each task on its support set and evaluate it on its query set.

    Returns ``(losses, scores)``, each ``[B]``: the query loss (differentiable with respect to
    ``params`` and ``lrs`` through the unrolled inner loop; only through the final step when
    first-order) and the query score (accuracy or MSE, detached).
    """
    engine = select_engine(cfg.strategy, batch.device, model)
    return engine.task_losses(model, params, _lr(lrs, cfg), batch, cfg, adapted_names(params, cfg))


def adapted_names(params: Mapping[str, Tensor], cfg: InnerConfig) -> list[str]:
    """The parameters that move in the inner loop, checked against the model's."""
    if cfg.adapt_only is None:
        return list(params)
    unknown = [n for n in cfg.adapt_only if n not in params]
    if unknown:
        raise ArgumentError(f"cannot adapt unknown parameters {unknown}; the model has {list(params)}")
    return list(cfg.adapt_only)


def _lr(lrs: Mapping[str, Tensor] | None, cfg: InnerConfig) -> LearningRate:
    return lrs if lrs is not None else cfg.lr

"""The ``vmap`` engine: ``torch.func.vmap`` over tasks with ``torch.func.grad`` inside; any model."""
from __future__ import annotations

from torch import Tensor, nn
from torch.func import vmap

from ..errors import ArgumentError
from ..tasks import TaskBatch
from ..params import Params
from .core import InnerConfig, LearningRate
from .adaptation import adapted_one, functorch_sgd, one_task_loss


class VmapEngine:
    """``torch.func.vmap`` over the tasks of a meta-batch, ``torch.func.grad`` inside; any model."""

    name = "vmap"

    @staticmethod
    def _check(cfg: InnerConfig) -> None:
        if cfg.support_batches and cfg.support_batches > 1:  # the slices depend on the labels' values
            raise ArgumentError("inner minibatches (support_batches) pick examples by label, which vmap cannot: "
                                "use strategy 'batched', 'loop' or 'threads'")

    def adapt(self, model: nn.Module, params: Params, lr: LearningRate, support_x: Tensor, support_y: Tensor,
              cfg: InnerConfig, names: list[str]) -> Params:
        self._check(cfg)
        return vmap(lambda x, y: adapted_one(model, params, lr, x, y, cfg, names, functorch_sgd))(support_x, support_y)

    def task_losses(self, model: nn.Module, params: Params, lr: LearningRate, batch: TaskBatch, cfg: InnerConfig,
                    names: list[str]) -> tuple[Tensor, Tensor]:
        self._check(cfg)
        return vmap(lambda sx, sy, qx, qy: one_task_loss(model, params, lr, sx, sy, qx, qy, cfg, names, functorch_sgd))(
            batch.support_x, batch.support_y, batch.query_x, batch.query_y)

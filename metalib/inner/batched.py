"""The ``batched`` engine: every task in one pass of the model's own ``forward_tasks``.

Tasks are stacked along channels, so each convolution is one grouped convolution, with plain
autograd (no functorch). The inner gradient is that of the *sum* of per-task losses with respect to
per-task copies of the parameters, which is each task's own gradient in its own slice.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from ..tasks import TaskBatch
from ..params import Params
from .adaptation import adapt_with, head_only
from .core import InnerConfig, LearningRate, at_step, query_loss, query_step


class BatchedEngine:
    """All tasks in one ``forward_tasks`` pass (needs a TaskBatchedModel)."""

    name = "batched"

    def __init__(self, channels_last: bool = False):
        self.channels_last = channels_last

    def _adapt(self, model: nn.Module, params: Params, lr: LearningRate, x: Tensor, y: Tensor, cfg: InnerConfig,
               names: list[str]) -> tuple[list[Params], Callable[[Params, Tensor, int], Tensor]]:
        """The adapted parameters (:func:`~metalib.inner.core.inner_path`) and ``forward(params, x, step)``."""
        cl = self.channels_last
        return adapt_with(lambda p, inp, second_order=False: model.forward_tasks(p, inp, second_order, cl),
                          lambda p, inp: model.embed_tasks(p, inp, False, cl), model.head_tasks,
                          lambda out, target: cfg.problem.task_loss(out, target).sum(), params, lr, x, y, cfg, names,
                          head_only_=head_only(model, names), tasks=x.shape[0])

    def adapt(self, model: nn.Module, params: Params, lr: LearningRate, support_x: Tensor, support_y: Tensor,
              cfg: InnerConfig, names: list[str]) -> Params:
        B = support_x.shape[0]
        fast = at_step(self._adapt(model, params, lr, support_x, support_y, cfg, names)[0][-1], cfg.per_step, query_step(cfg.steps))
        return {k: v if v.dim() > params[k].dim() - (k in cfg.per_step) else v.expand(B, *v.shape)
                for k, v in fast.items()}

    def task_losses(self, model: nn.Module, params: Params, lr: LearningRate, batch: TaskBatch, cfg: InnerConfig,
                    names: list[str]) -> tuple[Tensor, Tensor]:
        path, fwd = self._adapt(model, params, lr, batch.support_x, batch.support_y, cfg, names)

        def evaluate(p: Params, step: int) -> tuple[Tensor, Tensor]:
            out = fwd(p, batch.query_x, step)
            return cfg.problem.task_loss(out, batch.query_y), out
        loss, out = query_loss(evaluate, path, cfg)
        return loss, cfg.problem.task_score(out.detach(), batch.query_y)

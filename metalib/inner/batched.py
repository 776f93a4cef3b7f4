"""The ``batched`` engine: every task in one pass of the model's own ``forward_tasks``.

Tasks are stacked along channels, so each convolution is one grouped convolution, with plain
autograd (no functorch). The inner gradient is that of the *sum* of per-task losses with respect to
per-task copies of the parameters, which is each task's own gradient in its own slice.
"""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from ..tasks import TaskBatch
from ..types import Params
from .core import InnerConfig, LearningRate, at_step, inner_path, query_loss, query_step, on_minibatches, start_head
from .one_task import head_only


class BatchedEngine:
    """All tasks in one ``forward_tasks`` pass (needs a TaskBatchedModel)."""

    name = "batched"

    def __init__(self, channels_last: bool = False):
        self.channels_last = channels_last

    def _adapt(self, model: nn.Module, params: Params, lr: LearningRate, x: Tensor, y: Tensor, cfg: InnerConfig,
               names: list[str]) -> tuple[list[Params], Callable[[Params, Tensor, int], Tensor]]:
        """The adapted parameters (:func:`~metalib.inner.core.inner_path`) and ``forward(params, x, step)``."""
        B, cl = x.shape[0], self.channels_last
        fixed = {k: v for k, v in params.items() if k not in names}
        fast = {k: params[k].expand(B, *params[k].shape) for k in names}
        if head_only(model, names) and not cfg.per_step:
            features = model.embed_tasks(params, x, False, cl)
            fast.update(start_head(cfg, fast, lambda: features, y))
            path = inner_path(on_minibatches(lambda p, i, xb, yb: cfg.problem.task_loss(model.head_tasks(p, xb), yb).sum(),
                                             features, y, cfg.support_batches), fast, lr, cfg)
            return [{**fixed, **p} for p in path], lambda p, inp, i: model.head_tasks(p, model.embed_tasks(p, inp, False, cl))
        fast.update(start_head(cfg, fast, lambda: model.embed_tasks(at_step(params, cfg.per_step, 0), x, False, cl), y))
        second_order = not cfg.first_order  # the support passes' graphs are differentiated again
        path = inner_path(on_minibatches(lambda p, i, xb, yb: cfg.problem.task_loss(
            model.forward_tasks(at_step({**fixed, **p}, cfg.per_step, i), xb, second_order, cl), yb).sum(),
            x, y, cfg.support_batches), fast, lr, cfg)
        return [{**fixed, **p} for p in path], \
            lambda p, inp, i: model.forward_tasks(at_step(p, cfg.per_step, i), inp, False, cl)

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

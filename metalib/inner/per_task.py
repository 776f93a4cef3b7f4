"""The ``loop`` and ``threads`` engines: tasks one after another, in the caller's thread or spread over
worker threads (:mod:`metalib.inner.workers`).

Each task's meta-gradient is taken as soon as its query loss is known (:class:`PerTaskGradients`), so
only one task's graph is alive per worker, as in a hand-written loop.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor, nn

from ..tasks import TaskBatch
from ..params import Params
from .core import InnerConfig, LearningRate
from .adaptation import adapted_one, autograd_sgd, is_native, one_task_loss
from .workers import chunks, map_chunks


class PerTaskGradients(torch.autograd.Function):
    """Per-task query losses whose gradients are taken task by task *during the forward pass*.

    Each task's graph (the activations of all its inner steps) is freed as soon as its gradient is
    known, instead of living until one backward over the whole meta-batch: memory holds one task's
    graph per worker plus a ``B x (meta-parameters)`` Jacobian, which the backward pass contracts with
    the incoming gradient of the losses. Several chunks of tasks run on the worker threads, forward and
    backward; the autograd engine would run a single backward on one CPU thread.
    ``run(leaves, i) -> (loss, score)`` builds task ``i``'s graph from detached copies of the inputs.
    """

    @staticmethod
    def forward(ctx, run, parts: list[slice], *inputs: Tensor):
        wanted = [j for j, t in enumerate(inputs) if t.requires_grad]

        def work(chunk: slice):
            leaves = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
            losses, scores, jacobian = [], [], []
            for i in range(chunk.start, chunk.stop):
                with torch.enable_grad():
                    loss, score = run(leaves, i)
                    grads = torch.autograd.grad(loss, [leaves[j] for j in wanted], allow_unused=True)
                losses.append(loss.detach())
                scores.append(score)
                jacobian.append([torch.zeros_like(leaves[j]) if g is None else g for j, g in zip(wanted, grads)])
            return losses, scores, jacobian
        done = map_chunks(work, parts)
        ctx.wanted, ctx.n_inputs = wanted, len(inputs)
        ctx.jacobian = [row for _, _, jac in done for row in jac]
        scores = torch.stack([s for _, part, _ in done for s in part])
        ctx.mark_non_differentiable(scores)
        return torch.stack([l for part, _, _ in done for l in part]), scores

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses: Tensor, _grad_scores: Tensor):
        grads: list[Tensor | None] = [None] * ctx.n_inputs
        for k, j in enumerate(ctx.wanted):
            per_task = torch.stack([row[k] for row in ctx.jacobian])  # [B, *shape]
            grads[j] = torch.tensordot(grad_losses.to(per_task.dtype), per_task, dims=1)
        ctx.jacobian = None
        return (None, None, *grads)


class PerTaskEngine:
    """Tasks one by one (``parallel=False``: ``loop``, the reference) or over worker threads (``threads``).

    ``threads`` needs a :class:`~metalib.models.TaskBatchedModel` (``functional_call`` swaps module
    attributes, which is not thread-safe). ``channels_last`` is the layout hint passed to such models.
    """

    def __init__(self, name: str, parallel: bool, channels_last: bool = False):
        self.name, self.parallel, self.channels_last = name, parallel, channels_last

    def adapt(self, model: nn.Module, params: Params, lr: LearningRate, support_x: Tensor, support_y: Tensor,
              cfg: InnerConfig, names: list[str]) -> Params:
        native = is_native(model)

        def run(chunk: slice) -> list[Params]:
            return [adapted_one(model, params, lr, x, y, cfg, names, autograd_sgd, native, self.channels_last)
                    for x, y in zip(support_x[chunk], support_y[chunk])]
        per_task = [p for part in map_chunks(run, chunks(len(support_x), self.parallel)) for p in part]
        return {k: torch.stack([p[k] for p in per_task]) for k in params}

    def task_losses(self, model: nn.Module, params: Params, lr: LearningRate, batch: TaskBatch, cfg: InnerConfig,
                    names: list[str]) -> tuple[Tensor, Tensor]:
        native = is_native(model)
        sx, sy, qx, qy = batch.support_x, batch.support_y, batch.query_x, batch.query_y
        keys, lr_keys = list(params), (list(lr) if isinstance(lr, Mapping) else [])
        inputs = [params[k] for k in keys] + [lr[k] for k in lr_keys]

        def run(leaves: list[Tensor], i: int) -> tuple[Tensor, Tensor]:
            p = dict(zip(keys, leaves[:len(keys)]))
            task_lr = dict(zip(lr_keys, leaves[len(keys):])) if lr_keys else lr
            return one_task_loss(model, p, task_lr, sx[i], sy[i], qx[i], qy[i], cfg, names, autograd_sgd, native,
                                 self.channels_last)

        parts = chunks(len(sx), self.parallel)
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            return PerTaskGradients.apply(run, parts, *inputs)

        def work(chunk: slice) -> tuple[Tensor, Tensor]:
            results = [run(inputs, i) for i in range(chunk.start, chunk.stop)]
            return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])
        done = map_chunks(work, parts)
        return torch.cat([l for l, _ in done]), torch.cat([s for _, s in done])

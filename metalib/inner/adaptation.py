"""Adapting tasks: the one body every engine runs (:func:`adapt_with`), given how to run the model.

The per-task engines (``loop``, ``threads``) and ``vmap`` hand it one task's forward functions and loss; ``batched``
hands it the model's task-batched ones and the sum of the tasks' losses. Each option of
:class:`~metalib.inner.InnerConfig` (which parameters move, where the head starts, per-step parameters, inner
minibatches, the proximal term, the multi-step loss's path) is therefore implemented once, here and in
:mod:`~metalib.inner.core`."""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn
from torch.func import functional_call

from ..models import BodyHeadModel, TaskBatchedModel
from ..params import Params
from .core import (InnerConfig, LearningRate, at_step, autograd_gradient, functorch_gradient, inner_path, on_minibatches,
                   query_loss, query_step, start_head)

Forward = Callable[..., Tensor]
SGD = Callable[[Callable[[Params, int], Tensor], Params, LearningRate, InnerConfig], list[Params]]


def forward(model: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """``model(x)`` with ``params`` substituted (a thin wrapper over ``functional_call``)."""
    return functional_call(model, dict(params), (x,))


def autograd_sgd(loss: Callable[[Params, int], Tensor], fast: Params, lr: LearningRate, cfg: InnerConfig) -> list[Params]:
    """The inner loop with ``torch.autograd.grad`` (per-task and batched engines), as :func:`inner_path`."""
    return inner_path(loss, fast, lr, cfg, autograd_gradient)


def functorch_sgd(loss: Callable[[Params, int], Tensor], fast: Params, lr: LearningRate, cfg: InnerConfig) -> list[Params]:
    """The same steps with ``torch.func.grad``, which works inside ``vmap``."""
    return inner_path(loss, fast, lr, cfg, functorch_gradient)


def head_only(model: nn.Module, names: list[str]) -> bool:
    """Only ``head.*`` parameters adapt (ANIL): the body's features can be computed once per task."""
    return bool(names) and isinstance(model, BodyHeadModel) and all(n.startswith("head.") for n in names)


def _sub(params: Params, prefix: str) -> Params:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def one_task_forwards(model: nn.Module, native: bool, channels_last: bool = False) -> tuple[Forward, Forward, Forward]:
    """``(forward, embed, head)`` for one task's inputs. ``native``: the model's own task-batched functions
    with a meta-batch of one (plain autograd, thread-safe); else ``functional_call``.
    ``forward(p, x, second_order)`` passes the model its speed hint (see ``Conv4.forward_tasks``)."""
    if native:
        return (lambda p, x, second_order=False: model.forward_tasks(p, x[None], second_order, channels_last)[0],
                lambda p, x: model.embed_tasks(p, x[None], False, channels_last)[0],
                lambda p, h: model.head_tasks(p, h[None])[0])
    return (lambda p, x, second_order=False: forward(model, p, x),
            lambda p, x: functional_call(model.features, _sub(p, "features."), (x,)),
            lambda p, h: functional_call(model.head, _sub(p, "head."), (h,)))


def adapt_with(forward_: Forward, embed: Forward, head: Forward, loss: Callable[[Tensor, Tensor], Tensor],
               params: Params, lr: LearningRate, x: Tensor, y: Tensor, cfg: InnerConfig, names: list[str], *,
               head_only_: bool, sgd: SGD = autograd_sgd, tasks: int | None = None
               ) -> tuple[list[Params], Callable[[Params, Tensor, int], Tensor]]:
    """Adapt on the support set ``(x, y)``; returns the adapted parameters (``[final]``, or every step's for the
    multi-step loss) and ``forward(params, x, step)``. ``forward_(p, x, second_order)``, ``embed(p, x)`` and
    ``head(p, features)`` run the model (on one task, or on ``tasks`` tasks at once, whose moving parameters are
    then expanded to ``[tasks, ...]``); ``loss(output, y)`` is what the inner steps descend; ``head_only_``: only
    the head moves, so the body's features are computed once."""
    fixed = {k: v for k, v in params.items() if k not in names}
    fast = {k: params[k] if tasks is None else params[k].expand(tasks, *params[k].shape) for k in names}
    if head_only_ and not cfg.per_step:
        features = embed(params, x)  # the body is fixed: its features are computed once per task
        fast.update(start_head(cfg, fast, lambda: features, y))
        path = sgd(on_minibatches(lambda p, i, xb, yb: loss(head(p, xb), yb), features, y, cfg.support_batches),
                   fast, lr, cfg)
        return [{**fixed, **p} for p in path], lambda p, inp, i: head(p, embed(p, inp))
    fast.update(start_head(cfg, fast, lambda: embed(at_step(params, cfg.per_step, 0), x), y))
    second_order = not cfg.first_order  # the support passes' graphs are differentiated again
    path = sgd(on_minibatches(lambda p, i, xb, yb: loss(forward_(at_step({**fixed, **p}, cfg.per_step, i), xb,
                                                                  second_order), yb), x, y, cfg.support_batches),
               fast, lr, cfg)
    return [{**fixed, **p} for p in path], lambda p, inp, i: forward_(at_step(p, cfg.per_step, i), inp)


def adapt_one(model: nn.Module, params: Params, lr: LearningRate, x: Tensor, y: Tensor, cfg: InnerConfig,
              names: list[str], sgd: SGD, native: bool = False,
              channels_last: bool = False) -> tuple[list[Params], Callable[[Params, Tensor, int], Tensor]]:
    """Adapt one task (:func:`adapt_with` with one task's forward functions and loss)."""
    fwd, embed, head = one_task_forwards(model, native, channels_last)
    return adapt_with(fwd, embed, head, cfg.problem.loss, params, lr, x, y, cfg, names,
                      head_only_=head_only(model, names), sgd=sgd)


def adapted_one(model: nn.Module, params: Params, lr: LearningRate, x: Tensor, y: Tensor, cfg: InnerConfig,
                names: list[str], sgd: SGD, native: bool = False, channels_last: bool = False) -> Params:
    """One task's final adapted parameters (per-step parameters at their last step)."""
    path, _ = adapt_one(model, params, lr, x, y, cfg, names, sgd, native, channels_last)
    return at_step(path[-1], cfg.per_step, query_step(cfg.steps))


def is_native(model: nn.Module) -> bool:
    return isinstance(model, TaskBatchedModel)


def one_task_loss(model: nn.Module, params: Params, lr: LearningRate, sx: Tensor, sy: Tensor, qx: Tensor,
                  qy: Tensor, cfg: InnerConfig, names: list[str], sgd: SGD = autograd_sgd, native: bool = False,
                  channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """One task: adapt on its support set, then its query loss (differentiable; the multi-step loss with
    ``cfg.step_weights``) and score (detached)."""
    path, fwd = adapt_one(model, params, lr, sx, sy, cfg, names, sgd, native, channels_last)

    def evaluate(p: Params, step: int) -> tuple[Tensor, Tensor]:
        out = fwd(p, qx, step)
        return cfg.problem.loss(out, qy), out
    loss, out = query_loss(evaluate, path, cfg)
    return loss, cfg.problem.score(out.detach(), qy)

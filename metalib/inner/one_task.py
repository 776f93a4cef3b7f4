"""Adapting one task: the body shared by the per-task engines (``loop``, ``threads``) and ``vmap``."""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn
from torch.func import functional_call, grad

from ..models import BodyHeadModel, TaskBatchedModel
from ..types import Params
from .core import InnerConfig, LearningRate, inner_sgd, sgd_step, with_proximal

Forward = Callable[..., Tensor]
SGD = Callable[[Callable[[Params], Tensor], Params, LearningRate, InnerConfig], Params]


def forward(model: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """``model(x)`` with ``params`` substituted (a thin wrapper over ``functional_call``)."""
    return functional_call(model, dict(params), (x,))


def autograd_sgd(loss: Callable[[Params], Tensor], fast: Params, lr: LearningRate, cfg: InnerConfig) -> Params:
    """The inner loop with ``torch.autograd.grad`` (per-task and batched engines)."""
    return inner_sgd(loss, fast, lr, cfg.steps, cfg.first_order, cfg.proximal)


def functorch_sgd(loss: Callable[[Params], Tensor], fast: Params, lr: LearningRate, cfg: InnerConfig) -> Params:
    """The same steps with ``torch.func.grad``, which works inside ``vmap``."""
    loss = with_proximal(loss, fast, cfg.proximal)
    for _ in range(cfg.steps):
        grads = grad(loss)(fast)
        if cfg.first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        fast = sgd_step(fast, grads, lr)
    return fast


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


def adapt_one(model: nn.Module, params: Params, lr: LearningRate, x: Tensor, y: Tensor, cfg: InnerConfig,
              names: list[str], sgd: SGD, native: bool = False,
              channels_last: bool = False) -> tuple[Params, Callable[[Params, Tensor], Tensor]]:
    """Adapt one task; returns the adapted parameters and the forward function they go with."""
    fwd, embed, head = one_task_forwards(model, native, channels_last)
    fixed = {k: v for k, v in params.items() if k not in names}
    fast = {k: params[k] for k in names}
    if head_only(model, names):
        features = embed(params, x)  # the body is fixed: its features are computed once per task
        fast = sgd(lambda p: cfg.problem.loss(head(p, features), y), fast, lr, cfg)
        return {**fixed, **fast}, lambda p, inp: head(p, embed(p, inp))
    second_order = not cfg.first_order  # the support passes' graphs are differentiated again
    fast = sgd(lambda p: cfg.problem.loss(fwd({**fixed, **p}, x, second_order), y), fast, lr, cfg)
    return {**fixed, **fast}, fwd


def is_native(model: nn.Module) -> bool:
    return isinstance(model, TaskBatchedModel)


def one_task_loss(model: nn.Module, params: Params, lr: LearningRate, sx: Tensor, sy: Tensor, qx: Tensor,
                  qy: Tensor, cfg: InnerConfig, names: list[str], native: bool,
                  channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """One task: adapt on its support set, then its query loss (differentiable) and score (detached)."""
    fast, fwd = adapt_one(model, params, lr, sx, sy, cfg, names, autograd_sgd, native, channels_last)
    out = fwd(fast, qx)
    return cfg.problem.loss(out, qy), cfg.problem.score(out.detach(), qy)


"""The inner-loop core: adapt a whole meta-batch of tasks with a few gradient steps.

One pair of functions, :func:`adapt` and :func:`task_losses`, does the work for every
gradient-based algorithm in metalib:

* ``steps`` SGD steps on each task's support loss, starting from shared ``params``;
* ``lr`` a scalar or a dict of per-parameter tensors (Meta-SGD learns them);
* ``first_order=True`` stops gradients through the inner gradients (FOMAML, Reptile);
* ``adapt`` names the parameters that move (all by default; the head for ANIL, whose body
  features are then computed once per task instead of once per step).

The meta-gradient flows through the unrolled loop by a plain ``backward()``. Three strategies
compute the same numbers (``tests/test_inner.py`` checks them against each other, a naive loop
and finite differences):

``batched``  the model's own task-batched forward (``model.forward_tasks``): every task in one
             pass, tasks stacked along channels so each convolution is one grouped convolution.
             Plain autograd, no functorch. Default whenever the model provides it.
``vmap``     ``torch.func.vmap`` over tasks with ``torch.func.grad`` inside; works for any model.
``loop``     one task after another with ``torch.autograd.grad``; the reference.

``auto`` picks ``batched`` when the model supports it, except where the model says otherwise for
CPUs (conv4: grouped convolutions were measured slower than the loop on CPU), else ``vmap`` on
accelerators and ``loop`` on CPU. BENCHMARKS.md has the measured speeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

__all__ = [
    "Params", "InnerConfig", "Problem", "CLASSIFICATION", "REGRESSION",
    "adapt", "task_losses", "resolve_strategy", "forward",
]

Params = dict[str, Tensor]
Strategy = Literal["auto", "batched", "vmap", "loop"]
STRATEGIES = ("auto", "batched", "vmap", "loop")


@dataclass(frozen=True)
class Problem:
    """What a task asks for: the loss to minimise and the score to report (per task)."""

    name: str
    loss: Callable[[Tensor, Tensor], Tensor]  # (outputs [n, ...], targets [n, ...]) -> scalar
    score: Callable[[Tensor, Tensor], Tensor]
    score_name: str
    higher_is_better: bool

    def task_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Per-task mean loss of a meta-batch: ``out`` ``[B, n, ...]`` -> ``[B]``."""
        if self is CLASSIFICATION or self.name == "classification":
            return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
        return F.mse_loss(out, y, reduction="none").flatten(1).mean(1)

    def task_score(self, out: Tensor, y: Tensor) -> Tensor:
        if self.name == "classification":
            return (out.argmax(-1) == y).to(out.dtype).flatten(1).mean(1)
        return self.task_loss(out, y)


def _accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.argmax(-1) == y).to(logits.dtype).mean()


CLASSIFICATION = Problem("classification", F.cross_entropy, _accuracy, "accuracy", True)
REGRESSION = Problem("regression", F.mse_loss, F.mse_loss, "mse", False)


@dataclass(frozen=True)
class InnerConfig:
    """How a task is adapted. Algorithms are configurations of this, not copies of the loop."""

    steps: int = 1
    lr: float = 0.4
    first_order: bool = False
    adapt: tuple[str, ...] | None = None  # parameter names that move; None = all
    strategy: Strategy = "auto"
    problem: Problem = field(default=CLASSIFICATION)

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"inner steps must be >= 0, got {self.steps}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")


def resolve_strategy(strategy: Strategy, device: torch.device, model: nn.Module | None = None) -> str:
    """``auto`` -> ``batched`` if the model has ``forward_tasks`` (unless the model names another
    ``cpu_strategy`` for CPUs, as conv4 does), else vmap on accelerators and loop on CPU."""
    if strategy == "batched" and model is not None and not hasattr(model, "forward_tasks"):
        raise ValueError(f"strategy 'batched' needs a model with forward_tasks(); {type(model).__name__} has none "
                         f"(use 'vmap' or 'loop')")
    if strategy != "auto":
        return strategy
    if model is not None and hasattr(model, "forward_tasks"):
        return getattr(model, "cpu_strategy", "batched") if device.type == "cpu" else "batched"
    return "loop" if device.type == "cpu" else "vmap"


def forward(model: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``model(x)`` with ``params`` substituted (a thin wrapper over ``functional_call``)."""
    return functional_call(model, dict(params), (x,))


def _names(params: Mapping[str, Tensor], cfg: InnerConfig) -> list[str]:
    if cfg.adapt is None:
        return list(params)
    unknown = [n for n in cfg.adapt if n not in params]
    if unknown:
        raise ValueError(f"cannot adapt unknown parameters {unknown}; the model has {list(params)}")
    return list(cfg.adapt)


def _head_only(model: nn.Module, names: list[str]) -> bool:
    return bool(names) and hasattr(model, "features") and hasattr(model, "head") and \
        all(n.startswith("head.") for n in names)


def _sub(params: Mapping[str, Tensor], prefix: str) -> Params:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def _step(fast: Params, grads: Mapping[str, Tensor], lrs: Mapping[str, Tensor] | float) -> Params:
    return {k: w - (lrs[k] if isinstance(lrs, Mapping) else lrs) * grads[k] for k, w in fast.items()}


def _autograd_sgd(loss: Callable[[Params], Tensor], fast: Params, lrs, cfg: InnerConfig) -> Params:
    """SGD steps with ``torch.autograd.grad`` (loop and batched strategies)."""
    for _ in range(cfg.steps):
        with torch.enable_grad():
            fast = {k: w if w.requires_grad else w.detach().requires_grad_() for k, w in fast.items()}
            gs = torch.autograd.grad(loss(fast), list(fast.values()), create_graph=not cfg.first_order)
        fast = _step(fast, dict(zip(fast, gs)), lrs)
    return fast


def _functorch_sgd(loss: Callable[[Params], Tensor], fast: Params, lrs, cfg: InnerConfig) -> Params:
    """SGD steps with ``torch.func.grad``, which works inside ``vmap``."""
    for _ in range(cfg.steps):
        grads = grad(loss)(fast)
        if cfg.first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        fast = _step(fast, grads, lrs)
    return fast


# ---- one task at a time (loop, and the body of vmap) -------------------------------------------

def _adapt_one(model: nn.Module, params: Params, lrs, x: Tensor, y: Tensor, cfg: InnerConfig,
               names: list[str], sgd) -> tuple[Params, Callable[[Params, Tensor], Tensor]]:
    """Adapt one task; returns the adapted parameters and the forward function they go with."""
    fixed = {k: v for k, v in params.items() if k not in names}
    fast = {k: params[k] for k in names}
    if _head_only(model, names):
        body = _sub(params, "features.")
        features = functional_call(model.features, body, (x,))
        head = lambda p, h: functional_call(model.head, _sub(p, "head."), (h,))  # noqa: E731
        fast = sgd(lambda p: cfg.problem.loss(head(p, features), y), fast, lrs, cfg)
        return {**fixed, **fast}, lambda p, inp: head(p, functional_call(model.features, body, (inp,)))
    fast = sgd(lambda p: cfg.problem.loss(forward(model, {**fixed, **p}, x), y), fast, lrs, cfg)
    return {**fixed, **fast}, lambda p, inp: forward(model, p, inp)


# ---- every task at once (batched) ---------------------------------------------------------------

def _adapt_batched(model: nn.Module, params: Params, lrs, x: Tensor, y: Tensor, cfg: InnerConfig,
                   names: list[str]) -> tuple[Params, Callable[[Params, Tensor], Tensor]]:
    """Adapt all tasks in one pass of ``model.forward_tasks``; adapted parameters are ``[B, ...]``.

    The inner gradient is that of the *sum* of per-task losses with respect to per-task copies of
    the parameters, which is each task's own gradient in its own slice.
    """
    B = x.shape[0]
    fixed = {k: v for k, v in params.items() if k not in names}
    fast = {k: params[k].expand(B, *params[k].shape) for k in names}
    if _head_only(model, names):
        features = model.embed_tasks(params, x)
        fast = _autograd_sgd(lambda p: cfg.problem.task_loss(model.head_tasks(p, features), y).sum(),
                             fast, lrs, cfg)
        return {**fixed, **fast}, lambda p, inp: model.head_tasks(p, model.embed_tasks(p, inp))
    fast = _autograd_sgd(lambda p: cfg.problem.task_loss(model.forward_tasks({**fixed, **p}, x), y).sum(),
                         fast, lrs, cfg)
    return {**fixed, **fast}, model.forward_tasks


# ---- public API -----------------------------------------------------------------------------------

def adapt(model: nn.Module, params: Params, support_x: Tensor, support_y: Tensor, cfg: InnerConfig,
          lrs: Mapping[str, Tensor] | None = None) -> Params:
    """Adapt every task of a meta-batch; returns parameters with a leading task dimension ``[B, ...]``.

    ``support_x`` is ``[B, n, ...]``. Parameters that do not adapt are broadcast to ``[B, ...]``.
    """
    names = _names(params, cfg)
    lr = lrs if lrs is not None else cfg.lr
    B = support_x.shape[0]
    strategy = resolve_strategy(cfg.strategy, support_x.device, model)
    if strategy == "batched":
        fast = _adapt_batched(model, params, lr, support_x, support_y, cfg, names)[0]
        return {k: v if v.dim() > params[k].dim() else v.expand(B, *v.shape) for k, v in fast.items()}
    if strategy == "vmap":
        return vmap(lambda x, y: _adapt_one(model, params, lr, x, y, cfg, names, _functorch_sgd)[0])(
            support_x, support_y)
    per_task = [_adapt_one(model, params, lr, x, y, cfg, names, _autograd_sgd)[0]
                for x, y in zip(support_x, support_y)]
    return {k: torch.stack([p[k] for p in per_task]) for k in params}


def task_losses(model: nn.Module, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                query_y: Tensor, cfg: InnerConfig, lrs: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Adapt each task on its support set and evaluate it on its query set.

    Returns ``(losses, scores)``, each ``[B]``: the query loss (differentiable with respect to
    ``params`` and ``lrs`` through the unrolled inner loop; only through the final step when
    first-order) and the query score (accuracy or MSE, detached).
    """
    names = _names(params, cfg)
    lr = lrs if lrs is not None else cfg.lr
    problem = cfg.problem
    strategy = resolve_strategy(cfg.strategy, support_x.device, model)
    if strategy == "batched":
        fast, fwd = _adapt_batched(model, params, lr, support_x, support_y, cfg, names)
        out = fwd(fast, query_x)
        return problem.task_loss(out, query_y), problem.task_score(out.detach(), query_y)

    sgd = _functorch_sgd if strategy == "vmap" else _autograd_sgd

    def one(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
        fast, fwd = _adapt_one(model, params, lr, sx, sy, cfg, names, sgd)
        out = fwd(fast, qx)
        return problem.loss(out, qy), problem.score(out.detach(), qy)

    if strategy == "vmap":
        return vmap(one)(support_x, support_y, query_x, query_y)
    results = [one(*t) for t in zip(support_x, support_y, query_x, query_y)]
    return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])

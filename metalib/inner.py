"""The inner-loop core: adapt a whole meta-batch of tasks with a few gradient steps.

One function, :func:`adapt`, does the work for every gradient-based algorithm in metalib:

* ``steps`` SGD steps on each task's support loss, starting from shared ``params``;
* ``lr`` a scalar or a dict of per-parameter tensors (Meta-SGD learns them);
* ``first_order=True`` stops gradients through the inner gradients (FOMAML, Reptile);
* ``adapt`` names the parameters that move (all by default; the head for ANIL).

The inner gradient is taken with ``torch.func.grad``, which composes with ordinary autograd, so
the outer (meta-)gradient flows through the whole unrolled loop by a plain ``backward()``.
Tasks run either in one batched computation (``strategy="vmap"``) or one after another
(``strategy="loop"``); both give the same numbers. ``"auto"`` picks vmap on accelerators,
where one launch per meta-batch beats many tiny kernels, and the loop on CPU, where it was
measured faster (see BENCHMARKS.md).
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
Strategy = Literal["auto", "vmap", "loop"]


@dataclass(frozen=True)
class Problem:
    """What a task asks for: the loss to minimise and the score to report."""

    name: str
    loss: Callable[[Tensor, Tensor], Tensor]
    score: Callable[[Tensor, Tensor], Tensor]
    score_name: str
    higher_is_better: bool


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
        if self.strategy not in ("auto", "vmap", "loop"):
            raise ValueError(f"strategy must be 'auto', 'vmap' or 'loop', got {self.strategy!r}")


def resolve_strategy(strategy: Strategy, device: torch.device) -> Literal["vmap", "loop"]:
    """``auto`` -> vmap on accelerators, a per-task loop on CPU."""
    if strategy == "auto":
        return "loop" if device.type == "cpu" else "vmap"
    return strategy


def _head_only(model: nn.Module, names: list[str]) -> bool:
    return (hasattr(model, "features") and hasattr(model, "head")
            and all(n.startswith("head.") for n in names))


def _sub(params: Mapping[str, Tensor], prefix: str) -> Params:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def forward(model: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``model(x)`` with ``params`` substituted (a thin wrapper over ``functional_call``)."""
    return functional_call(model, dict(params), (x,))


def _adapt_one(model: nn.Module, params: Params, lrs: Mapping[str, Tensor] | float, x: Tensor, y: Tensor,
               cfg: InnerConfig, names: list[str], batched: bool) -> tuple[Params, Callable[[Params, Tensor], Tensor]]:
    """Adapt one task; returns the adapted parameters and the forward function they go with.

    When only the head adapts (ANIL), the body's features are computed once per task and the
    inner loop runs on the head alone: same numbers, a fraction of the work.
    """
    if _head_only(model, names) and names:
        body = _sub(params, "features.")
        features = functional_call(model.features, body, (x,))
        head_fn = lambda p, inp: functional_call(model.head, _sub(p, "head."), (functional_call(model.features, body, (inp,)),))
        fast_head = {k: params[k] for k in names}
        fixed = {k: v for k, v in params.items() if k not in fast_head}

        def support_loss(fast: Params) -> Tensor:
            return cfg.problem.loss(functional_call(model.head, _sub(fast, "head."), (features,)), y)

        fast_head = _sgd(support_loss, fast_head, lrs, cfg, batched)
        return {**fixed, **fast_head}, head_fn

    fast = {k: params[k] for k in names}
    fixed = {k: v for k, v in params.items() if k not in fast}

    def support_loss(moving: Params) -> Tensor:
        return cfg.problem.loss(forward(model, {**fixed, **moving}, x), y)

    fast = _sgd(support_loss, fast, lrs, cfg, batched)
    return {**fixed, **fast}, lambda p, inp: forward(model, p, inp)


def _sgd(loss: Callable[[Params], Tensor], fast: Params, lrs: Mapping[str, Tensor] | float,
         cfg: InnerConfig, batched: bool) -> Params:
    """``cfg.steps`` SGD steps on ``loss`` from ``fast``.

    Inside ``vmap`` the gradient must come from ``torch.func.grad``. Outside it, plain
    ``torch.autograd.grad`` gives the same numbers and was measured many times faster on CPU
    (functorch's double backward through convolutions is slow there).
    """
    for _ in range(cfg.steps):
        if batched:
            grads = grad(loss)(fast)
            if cfg.first_order:
                grads = {k: g.detach() for k, g in grads.items()}
        else:
            with torch.enable_grad():
                fast = {k: w if w.requires_grad else w.detach().requires_grad_() for k, w in fast.items()}
                gs = torch.autograd.grad(loss(fast), list(fast.values()), create_graph=not cfg.first_order)
            grads = dict(zip(fast, gs))
        fast = {k: w - (lrs[k] if isinstance(lrs, Mapping) else lrs) * grads[k] for k, w in fast.items()}
    return fast


def adapt(model: nn.Module, params: Params, support_x: Tensor, support_y: Tensor, cfg: InnerConfig,
          lrs: Mapping[str, Tensor] | None = None) -> Params:
    """Adapt every task of a meta-batch; returns parameters with a leading task dimension ``[B, ...]``.

    ``support_x`` is ``[B, n, ...]``. Parameters that do not adapt are broadcast (expanded, no copy).
    """
    names = _names(params, cfg)
    lr = lrs if lrs is not None else cfg.lr

    batched = resolve_strategy(cfg.strategy, support_x.device) == "vmap"

    def one(x: Tensor, y: Tensor) -> Params:
        return _adapt_one(model, params, lr, x, y, cfg, names, batched)[0]

    if batched:
        return vmap(one)(support_x, support_y)
    per_task = [one(x, y) for x, y in zip(support_x, support_y)]
    return {k: torch.stack([p[k] for p in per_task]) for k in params}


def task_losses(model: nn.Module, params: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                query_y: Tensor, cfg: InnerConfig, lrs: Mapping[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Adapt each task on its support set and evaluate on its query set.

    Returns ``(losses, scores)``, each ``[B]``: the query loss (differentiable with respect to
    ``params`` and ``lrs`` through the unrolled inner loop, unless first-order) and the query score
    (accuracy or MSE, detached).
    """
    names = _names(params, cfg)
    lr = lrs if lrs is not None else cfg.lr

    batched = resolve_strategy(cfg.strategy, support_x.device) == "vmap"

    def one(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
        fast, fwd = _adapt_one(model, params, lr, sx, sy, cfg, names, batched)
        out = fwd(fast, qx)
        return cfg.problem.loss(out, qy), cfg.problem.score(out.detach(), qy)

    if batched:
        return vmap(one)(support_x, support_y, query_x, query_y)
    results = [one(*t) for t in zip(support_x, support_y, query_x, query_y)]
    return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])


def _names(params: Params, cfg: InnerConfig) -> list[str]:
    if cfg.adapt is None:
        return list(params)
    unknown = [n for n in cfg.adapt if n not in params]
    if unknown:
        raise ValueError(f"cannot adapt unknown parameters {unknown}; the model has {list(params)}")
    return list(cfg.adapt)

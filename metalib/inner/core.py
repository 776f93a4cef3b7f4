"""The inner loop, as notebook 04 shows it: SGD steps on each task's support set.

Every gradient-based algorithm in metalib is an :class:`InnerConfig` of this loop:

* ``steps`` SGD steps on each task's support loss, starting from the shared ``params``;
* ``lr`` a scalar, or per-parameter tensors that Meta-SGD learns;
* ``first_order=True`` treats the inner gradients as constants (FOMAML, Reptile);
* ``adapt_only`` names the parameters that move (all by default; the head for ANIL);
* ``proximal`` (``lambda``) adds ``lambda / 2 * |phi - theta|^2`` to the support loss, pulling each task's
  weights ``phi`` towards the shared start ``theta`` (iMAML's regularised inner problem);
* MAML++'s options: ``lr_per_step`` (each learning-rate tensor has one entry per step: learned per-step,
  per-layer rates), ``per_step`` (parameters that do not adapt but have one value per step, e.g. BatchNorm
  weights: ``[steps, *shape]``; the query pass after step i uses step i's, as the reference implementation does)
  and ``step_weights`` (the multi-step loss: the query loss after every step, weighted);
* ``head_init="prototypes"`` starts each task's linear head from its class prototypes (Proto-MAML);
  ``head_init="zeros"`` from zero (Kao et al.'s zeroing trick: every class starts equal, so the meta-learned
  head's arbitrary class order adds no noise to the meta-gradient);
* ``support_batches=n`` gives inner step ``i`` only the ``i % n``-th of ``n`` disjoint, class-balanced slices of
  the support set (Reptile's inner minibatches: consecutive steps see different examples).

:func:`~metalib.inner.adapt` and :func:`~metalib.inner.task_losses` take a whole meta-batch (a
:class:`~metalib.tasks.TaskBatch`) and hand it to an *engine* (:mod:`metalib.inner.select`) that decides how the tasks
are executed:
all at once, one by one, or over threads. Every engine runs :func:`inner_sgd` (or its ``torch.func``
twin) and computes the same numbers.
"""
from __future__ import annotations

import math
import operator

from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

import torch
from torch import Tensor

from ..errors import ArgumentError
from ..problems import CLASSIFICATION, Problem
from ..params import Params

__all__ = ["InnerConfig", "sgd_step", "with_proximal", "lr_at", "at_step", "inner_sgd", "inner_path", "autograd_gradient",
           "functorch_gradient", "query_loss", "query_step",
           "prototype_head", "start_head", "support_minibatch", "on_minibatches", "STRATEGIES"]

Strategy = Literal["auto", "batched", "vmap", "loop", "threads"]
STRATEGIES = ("auto", "batched", "vmap", "loop", "threads")
HEAD_INITS = (None, "prototypes", "zeros")
LearningRate = float | Tensor | Mapping[str, Tensor]


@dataclass(frozen=True, kw_only=True)
class InnerConfig:
    """How a task is adapted. Algorithms are configurations of this, not copies of the loop. Keyword-only; derive a
    variant with ``dataclasses.replace(cfg, steps=...)``."""

    steps: int = 1
    lr: float = 0.4
    first_order: bool = False
    adapt_only: tuple[str, ...] | None = None  # the parameters that move (None: all)
    strategy: Strategy = "auto"           # the engine; "auto" picks one by device and model
    problem: Problem = field(default=CLASSIFICATION)
    proximal: float = 0.0                 # lambda of the proximal term; 0 = plain support loss
    lr_per_step: bool = False             # learning-rate tensors are [steps, ...]: one rate per step
    per_step: tuple[str, ...] = ()        # fixed parameters given as [steps, *shape]: one value per step
    step_weights: tuple[float, ...] | None = None  # multi-step loss: weights of the query losses after steps 1..n
    head_init: str | None = None          # "prototypes" | "zeros": where each task's head starts (None: the model's)
    support_batches: int | None = None    # step i adapts on slice i % n of the support set (None: all of it)

    def __post_init__(self):
        # numbers of any kind (NumPy or 0-d tensor scalars too) become plain ones; a string or a bool is a mistake
        try:
            steps = None if isinstance(self.steps, bool) else operator.index(self.steps)
        except TypeError:
            steps = None
        if steps is None or steps < 0:
            raise ArgumentError(f"inner steps must be an integer >= 0, got {self.steps!r}")
        try:
            lr = None if isinstance(self.lr, (bool, str, bytes)) else float(self.lr)
        except (TypeError, ValueError, RuntimeError):
            lr = None
        if lr is None or not math.isfinite(lr) or lr < 0:
            raise ArgumentError(f"the inner learning rate must be a finite number >= 0, got {self.lr!r}"
                                + (" (a string: pass a number, e.g. 0.1)" if isinstance(self.lr, str) else ""))
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "lr", lr)
        if not self.proximal >= 0:
            raise ArgumentError(f"the proximal weight must be >= 0, got {self.proximal}")
        if self.strategy not in STRATEGIES:
            raise ArgumentError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.step_weights is not None and len(self.step_weights) != self.steps:
            raise ArgumentError(f"step_weights needs one weight per inner step ({self.steps}), got {len(self.step_weights)}")
        if self.support_batches is not None and self.support_batches < 1:
            raise ArgumentError(f"support_batches must be >= 1 (or None), got {self.support_batches}")
        if self.head_init not in HEAD_INITS:
            raise ArgumentError(f"head_init must be one of {HEAD_INITS}, got {self.head_init!r}")


def sgd_step(params: Params, grads: Mapping[str, Tensor], lr: LearningRate) -> Params:
    """One SGD step ``w - lr * g`` for every parameter; ``lr`` is a number or one tensor per parameter."""
    if isinstance(lr, (int, float)):
        return {k: torch.add(w, grads[k], alpha=-lr) for k, w in params.items()}  # one kernel, not two
    return {k: w - (lr[k] if isinstance(lr, Mapping) else lr) * grads[k] for k, w in params.items()}


def with_proximal(loss: Callable[[Params, int], Tensor], start: Params,
                  weight: float) -> Callable[[Params, int], Tensor]:
    """``loss(p, step) + weight / 2 * sum |p - start|^2`` (over every tensor of ``p``; per-task slices of a batched
    ``p`` each get their own term); ``loss`` itself when ``weight`` is 0."""
    if not weight:
        return loss
    return lambda p, i: loss(p, i) + 0.5 * weight * sum((p[k] - start[k]).pow(2).sum() for k in p)


def lr_at(lr: LearningRate, step: int, per_step: bool) -> LearningRate:
    """The learning rate of inner step ``step``: ``lr`` itself, or entry ``step`` of each per-step tensor
    (the last one past the end, e.g. for more steps at test time than in training)."""
    if not per_step:
        return lr
    if isinstance(lr, Mapping):
        return {k: v[min(step, len(v) - 1)] for k, v in lr.items()}
    return lr[min(step, len(lr) - 1)] if isinstance(lr, Tensor) else lr


def at_step(params: Params, names: tuple[str, ...], step: int) -> Params:
    """``params`` with each per-step parameter in ``names`` (``[steps, *shape]``) replaced by its value at ``step``
    (0-based; the last one past the end, the first before the start)."""
    if not names:
        return params
    return {k: v[min(max(step, 0), len(v) - 1)] if k in names else v for k, v in params.items()}


def query_step(step: int) -> int:
    """The per-step parameters of the query pass after inner step ``step`` (1-based): those of that step's own
    support pass, ``step - 1``, as the MAML++ reference implementation indexes them."""
    return max(step - 1, 0)


def autograd_gradient(loss: Callable[[Params], Tensor], params: Params, first_order: bool) -> tuple[Params, Params]:
    """``(params, grads)`` of one inner step with ``torch.autograd.grad``: the graph of the step is kept
    (``create_graph``) unless ``first_order``; parameters that are not yet autograd leaves become ones."""
    with torch.enable_grad():
        params = {k: w if w.requires_grad else w.detach().requires_grad_() for k, w in params.items()}
        grads = torch.autograd.grad(loss(params), list(params.values()), create_graph=not first_order)
    return params, dict(zip(params, grads))


def functorch_gradient(loss: Callable[[Params], Tensor], params: Params, first_order: bool) -> tuple[Params, Params]:
    """The same with ``torch.func.grad``, which works inside ``vmap``."""
    grads = torch.func.grad(loss)(params)
    return params, ({k: g.detach() for k, g in grads.items()} if first_order else grads)


GradientFn = Callable[[Callable[[Params], Tensor], Params, bool], tuple[Params, Params]]


def inner_sgd(loss: Callable[[Params, int], Tensor], params: Params, lr: LearningRate, steps: int,
              first_order: bool = False, proximal: float = 0.0, lr_per_step: bool = False,
              trajectory: bool = False, gradient: GradientFn = autograd_gradient) -> Params | list[Params]:
    """``steps`` SGD steps on ``loss(params, step)`` (plus the ``proximal`` term around the starting ``params``).
    The graph of each step is kept (``create_graph``) unless ``first_order``, so the result is differentiable
    with respect to the starting ``params`` and ``lr``. ``trajectory=True`` returns the parameters before the
    first step and after every step (``steps + 1`` dicts) instead of the last ones. ``gradient``: how a step's
    gradient is taken, :func:`autograd_gradient` or :func:`functorch_gradient` (inside ``vmap``)."""
    loss = with_proximal(loss, params, proximal)
    # each parameter its own variable: the inner gradient is the partial derivative even where start values
    # depend on each other (Proto-MAML's head is a function of the body)
    if gradient is autograd_gradient and torch.is_grad_enabled():  # (a view made under no_grad would be a leaf
        params = {k: w.view_as(w) if w.requires_grad else w for k, w in params.items()}  # that autograd cannot use)
    path = [params]
    for i in range(steps):
        params, grads = gradient(lambda p: loss(p, i), params, first_order)
        params = sgd_step(params, grads, lr_at(lr, i, lr_per_step))
        if trajectory:
            path.append(params)
    return path if trajectory else params


def inner_path(loss: Callable[[Params, int], Tensor], params: Params, lr: LearningRate, cfg: InnerConfig,
               gradient: GradientFn = autograd_gradient) -> list[Params]:
    """:func:`inner_sgd` as ``cfg`` configures it: the adapted parameters as ``[final]``, or every step's
    (``steps + 1`` dicts) when the multi-step loss needs them."""
    out = inner_sgd(loss, params, lr, cfg.steps, cfg.first_order, cfg.proximal, cfg.lr_per_step,
                    trajectory=cfg.step_weights is not None, gradient=gradient)
    return out if isinstance(out, list) else [out]


def query_loss(evaluate: Callable[[Params, int], tuple[Tensor, Tensor]], path: list[Params],
               cfg: InnerConfig) -> tuple[Tensor, Tensor]:
    """``(loss, output)`` of the query set after the last step (``evaluate(params, step) -> (loss, output)``, with
    ``path`` as :func:`inner_path` returns it); with ``cfg.step_weights`` (the multi-step loss) the loss is the
    weighted sum of the query losses after every step."""
    loss, out = evaluate(path[-1], query_step(cfg.steps))
    if cfg.step_weights:
        loss = cfg.step_weights[-1] * loss + sum(w * evaluate(p, query_step(i))[0] for i, (w, p) in
                                                 enumerate(zip(cfg.step_weights[:-1], path[1:-1]), start=1) if w)
    return loss, out


def support_minibatch(x: Tensor, y: Tensor, step: int, n: int | None) -> tuple[Tensor, Tensor]:
    """The support examples inner step ``step`` adapts on: with ``n`` > 1 the ``step % n``-th of ``n`` disjoint
    slices (classification: each class's ``r``-th example goes to slice ``r % n``, so slices are class-balanced;
    regression: every ``n``-th point), else all of them. ``x``, ``y``: one task's ``[M, ...]`` or a batch's
    ``[B, M, ...]`` (integer labels ``[..., M]``, regression targets ``[..., M, 1]``)."""
    if not n or n == 1:
        return x, y
    classification = not y.is_floating_point()
    dim = y.dim() - 1 if classification else y.dim() - 2  # the example dimension
    if classification:
        onehot = torch.nn.functional.one_hot(y)
        rank = (onehot.cumsum(-2) * onehot).sum(-1) - 1  # how many earlier examples share the class
    else:
        rank = torch.arange(y.shape[dim], device=y.device).expand(y.shape[:dim + 1])
    keep = rank % n == step % n
    counts = keep.sum(-1)
    m = int(counts.flatten()[0])
    if m == 0 or n > int(rank.max()) + 1 or bool((counts != m).any()):
        raise ArgumentError(f"cannot split the support set (labels {tuple(y.shape)}) into {n} equal inner "
                            f"minibatches: use support_batches <= the shots per class, with every class equally shot")
    idx = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., :m]  # the kept positions, in order
    pick = lambda t: torch.take_along_dim(t, idx.reshape(*idx.shape, *[1] * (t.dim() - idx.dim())), dim=dim)
    return pick(x), pick(y)


def on_minibatches(loss: Callable[[Params, int, Tensor, Tensor], Tensor], x: Tensor, y: Tensor,
                   n: int | None) -> Callable[[Params, int], Tensor]:
    """``loss(params, step, x, y)`` as the inner loop's ``loss(params, step)``, each step on its support minibatch
    (:func:`support_minibatch`; the whole support set when ``n`` is None)."""
    return lambda p, i: loss(p, i, *support_minibatch(x, y, i, n))


def prototype_head(features: Tensor, y: Tensor, head: Params) -> Params:
    """Proto-MAML's head: a linear layer that computes ProtoNets' logits, ``W_c = 2 c_c``, ``b_c = -|c_c|^2``
    (``-|x - c_c|^2`` up to a term equal for every class), from support ``features`` ``[..., n, D]`` and labels
    ``[..., n]``; ``head`` (``head.weight``, ``head.bias``) gives the number of classes and the names."""
    ways = head["head.weight"].shape[-2]
    onehot = torch.nn.functional.one_hot(y, ways).to(features.dtype)  # [..., n, N]
    protos = onehot.transpose(-1, -2) @ features / onehot.sum(-2).clamp_min(1).unsqueeze(-1)  # [..., N, D]
    return {"head.weight": 2 * protos, "head.bias": -protos.pow(2).sum(-1)}


def start_head(cfg: InnerConfig, fast: Params, features: Callable[[], Tensor], y: Tensor) -> Params:
    """Each task's starting head as ``cfg.head_init`` sets it (to update ``fast`` with; ``{}`` for the model's own):
    the prototypes of the support ``features()`` (computed only then) or zeros shaped like ``fast``'s head."""
    if cfg.head_init == "prototypes":
        return prototype_head(features(), y, fast)
    if cfg.head_init == "zeros":
        return {k: torch.zeros_like(v) for k, v in fast.items() if k in ("head.weight", "head.bias")}
    return {}

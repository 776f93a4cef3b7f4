"""The inner-loop core: adapt a whole meta-batch of tasks with a few gradient steps.

One pair of functions, :func:`adapt` and :func:`task_losses`, does the work for every
gradient-based algorithm in metalib:

* ``steps`` SGD steps on each task's support loss, starting from shared ``params``;
* ``lr`` a scalar or a dict of per-parameter tensors (Meta-SGD learns them);
* ``first_order=True`` stops gradients through the inner gradients (FOMAML, Reptile);
* ``adapt`` names the parameters that move (all by default; the head for ANIL, whose body
  features are then computed once per task instead of once per step).

The meta-gradient flows through the unrolled loop by a plain ``backward()``. Four strategies
compute the same numbers (``tests/test_inner.py`` checks them against each other, a naive loop
and finite differences):

``batched``  the model's own task-batched forward (``model.forward_tasks``): every task in one
             pass, tasks stacked along channels so each convolution is one grouped convolution.
             Plain autograd, no functorch. Default on accelerators whenever the model provides it.
``vmap``     ``torch.func.vmap`` over tasks with ``torch.func.grad`` inside; works for any model.
``loop``     one task after another with ``torch.autograd.grad`` (through ``forward_tasks`` with
             one task when the model has it, else ``functional_call``); the reference. Each task's
             meta-gradient is taken as soon as its query loss is known, so only one task's graph
             is alive at a time (:class:`_PerTaskGradients`), as in a hand-written loop.
``threads``  the loop, with the tasks split over worker threads that each run one intra-op
             thread. On a CPU this beats splitting each small convolution over the cores. Needs
             ``forward_tasks`` (``functional_call`` swaps module attributes: not thread-safe).

``auto`` picks ``batched`` when the model supports it, except where the model names another
strategy for CPUs (conv4: ``threads``; grouped convolutions were measured slower there), else
``vmap`` on accelerators and ``loop`` on CPU. BENCHMARKS.md has the measured speeds.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

__all__ = [
    "Params", "InnerConfig", "Problem", "CLASSIFICATION", "REGRESSION",
    "adapt", "task_losses", "resolve_strategy", "forward",
]

Params = dict[str, Tensor]
Strategy = Literal["auto", "batched", "vmap", "loop", "threads"]
STRATEGIES = ("auto", "batched", "vmap", "loop", "threads")


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
    if strategy in ("batched", "threads") and model is not None and not hasattr(model, "forward_tasks"):
        raise ValueError(f"strategy {strategy!r} needs a model with forward_tasks(); {type(model).__name__} has none "
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
    if isinstance(lrs, (int, float)):
        return {k: torch.add(w, grads[k], alpha=-lrs) for k, w in fast.items()}  # one kernel, not two
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


# ---- one task at a time (loop, threads, and the body of vmap) ----------------------------------

def _one_task_forwards(model: nn.Module, native: bool):
    """``(forward, embed, head)`` for one task's inputs. ``native``: the model's own task-batched
    functions with a meta-batch of one (plain autograd, thread-safe); else ``functional_call``.
    ``forward(p, x, second_order)`` passes the model its speed hint (see ``Conv4.forward_tasks``)."""
    if native:
        return (lambda p, x, second_order=False: model.forward_tasks(p, x[None], second_order)[0],
                lambda p, x: model.embed_tasks(p, x[None])[0],
                lambda p, h: model.head_tasks(p, h[None])[0])
    return (lambda p, x, second_order=False: forward(model, p, x),
            lambda p, x: functional_call(model.features, _sub(p, "features."), (x,)),
            lambda p, h: functional_call(model.head, _sub(p, "head."), (h,)))


def _adapt_one(model: nn.Module, params: Params, lrs, x: Tensor, y: Tensor, cfg: InnerConfig,
               names: list[str], sgd, native: bool = False) -> tuple[Params, Callable[[Params, Tensor], Tensor]]:
    """Adapt one task; returns the adapted parameters and the forward function they go with."""
    fwd, embed, head = _one_task_forwards(model, native)
    fixed = {k: v for k, v in params.items() if k not in names}
    fast = {k: params[k] for k in names}
    if _head_only(model, names):
        features = embed(params, x)  # the body is fixed: its features are computed once per task
        fast = sgd(lambda p: cfg.problem.loss(head(p, features), y), fast, lrs, cfg)
        return {**fixed, **fast}, lambda p, inp: head(p, embed(p, inp))
    second_order = not cfg.first_order  # the support passes' graphs are differentiated again
    fast = sgd(lambda p: cfg.problem.loss(fwd({**fixed, **p}, x, second_order), y), fast, lrs, cfg)
    return {**fixed, **fast}, fwd


def _task_loss(model: nn.Module, params: Params, lrs, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor,
               cfg: InnerConfig, names: list[str], native: bool) -> tuple[Tensor, Tensor]:
    """One task: adapt on its support set, then its query loss (differentiable) and score (detached)."""
    fast, fwd = _adapt_one(model, params, lrs, sx, sy, cfg, names, _autograd_sgd, native)
    out = fwd(fast, qx)
    return cfg.problem.loss(out, qy), cfg.problem.score(out.detach(), qy)


# ---- tasks spread over worker threads ------------------------------------------------------------

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def _forget_pools_after_fork() -> None:
    """A forked child inherits the pools but not their threads (and maybe a held lock): start afresh."""
    global _POOLS_LOCK
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _one_intra_op_thread() -> None:
    torch.get_num_threads()  # first call in a thread: torch initialises the thread's count (from the global)
    torch.set_num_threads(1)  # ... so that this setting sticks to the thread


def _pool(workers: int) -> ThreadPoolExecutor:
    """A persistent pool whose threads each run one intra-op thread (the parallelism is across tasks)."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            caller_threads = torch.get_num_threads()
            pool = ThreadPoolExecutor(workers, thread_name_prefix="metalib-tasks", initializer=_one_intra_op_thread)
            started = threading.Barrier(workers)
            list(pool.map(lambda _: started.wait(timeout=60), range(workers)))  # start every worker now
            # torch.set_num_threads also sets the default for threads started later: give that back
            torch.set_num_threads(caller_threads)
            _POOLS[workers] = pool
        return _POOLS[workers]


def _chunks(n_tasks: int) -> list[slice]:
    """Contiguous slices of the meta-batch, one per worker (as many workers as torch has threads)."""
    workers = max(1, min(torch.get_num_threads(), n_tasks))
    bounds = [round(i * n_tasks / workers) for i in range(workers + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _task_chunks(strategy: str, n_tasks: int) -> list[slice]:
    """``threads``: one chunk per worker; ``loop``: the whole meta-batch in the caller's thread."""
    return _chunks(n_tasks) if strategy == "threads" else [slice(0, n_tasks)]


def _map_chunks(fn: Callable[[slice], object], chunks: Sequence[slice]) -> list:
    """``[fn(chunk) for chunk in chunks]``: inline for one chunk, else on the worker threads in the
    caller's grad mode."""
    if len(chunks) == 1:
        return [fn(chunks[0])]
    grad_mode = torch.is_grad_enabled()

    def work(chunk: slice):
        with torch.set_grad_enabled(grad_mode):
            return fn(chunk)
    return list(_pool(len(chunks)).map(work, chunks))


class _PerTaskGradients(torch.autograd.Function):
    """Per-task query losses whose gradients are taken task by task *during the forward pass*.

    Each task's graph (the activations of all its inner steps) is freed as soon as its gradient is
    known, as in a naive loop, instead of living until one backward over the whole meta-batch: memory
    holds one task's graph per worker plus a ``B x (meta-parameters)`` Jacobian, which the backward
    pass contracts with the incoming gradient of the losses. Several chunks of tasks run on the worker
    threads, forward and backward; the autograd engine would run a single backward on one CPU thread.
    ``run(leaves, i) -> (loss, score)`` builds task ``i``'s graph from detached copies of the inputs.
    """

    @staticmethod
    def forward(ctx, run, chunks: list[slice], *inputs: Tensor):
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
        parts = _map_chunks(work, chunks)
        ctx.wanted, ctx.n_inputs = wanted, len(inputs)
        ctx.jacobian = [row for _, _, jac in parts for row in jac]
        scores = torch.stack([s for _, part, _ in parts for s in part])
        ctx.mark_non_differentiable(scores)
        return torch.stack([l for part, _, _ in parts for l in part]), scores

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_losses: Tensor, _grad_scores: Tensor):
        grads: list[Tensor | None] = [None] * ctx.n_inputs
        for k, j in enumerate(ctx.wanted):
            per_task = torch.stack([row[k] for row in ctx.jacobian])  # [B, *shape]
            grads[j] = torch.tensordot(grad_losses.to(per_task.dtype), per_task, dims=1)
        ctx.jacobian = None
        return (None, None, *grads)


def _per_task_losses(model: nn.Module, params: Params, lrs, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor,
                     cfg: InnerConfig, names: list[str], chunks: list[slice]) -> tuple[Tensor, Tensor]:
    """The ``loop`` (one chunk) and ``threads`` strategies of :func:`task_losses`."""
    native = hasattr(model, "forward_tasks")
    keys, lr_keys = list(params), (list(lrs) if isinstance(lrs, Mapping) else [])
    inputs = [params[k] for k in keys] + [lrs[k] for k in lr_keys]

    def run(leaves: list[Tensor], i: int) -> tuple[Tensor, Tensor]:
        p = dict(zip(keys, leaves[:len(keys)]))
        lr = dict(zip(lr_keys, leaves[len(keys):])) if lr_keys else lrs
        return _task_loss(model, p, lr, sx[i], sy[i], qx[i], qy[i], cfg, names, native)

    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _PerTaskGradients.apply(run, chunks, *inputs)

    def work(chunk: slice) -> tuple[Tensor, Tensor]:
        results = [run(inputs, i) for i in range(chunk.start, chunk.stop)]
        return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])
    parts = _map_chunks(work, chunks)
    return torch.cat([l for l, _ in parts]), torch.cat([s for _, s in parts])


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
    second_order = not cfg.first_order  # the support passes' graphs are differentiated again
    fast = _autograd_sgd(lambda p: cfg.problem.task_loss(model.forward_tasks({**fixed, **p}, x, second_order), y).sum(),
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
    native = hasattr(model, "forward_tasks")

    def run(chunk: slice) -> list[Params]:
        return [_adapt_one(model, params, lr, x, y, cfg, names, _autograd_sgd, native)[0]
                for x, y in zip(support_x[chunk], support_y[chunk])]
    per_task = [p for part in _map_chunks(run, _task_chunks(strategy, B)) for p in part]
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

    if strategy in ("loop", "threads"):
        return _per_task_losses(model, params, lr, support_x, support_y, query_x, query_y, cfg, names,
                                _task_chunks(strategy, len(support_x)))

    def one(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
        fast, fwd = _adapt_one(model, params, lr, sx, sy, cfg, names, _functorch_sgd)
        out = fwd(fast, qx)
        return problem.loss(out, qy), problem.score(out.detach(), qy)

    return vmap(one)(support_x, support_y, query_x, query_y)

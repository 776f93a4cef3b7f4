"""MAML meta-gradients computed with peer libraries (learn2learn, higher, TorchOpt) and a naive loop.

Every adapter has the signature of :func:`meta_gradient_naive`: for a meta-batch of ``B`` tasks
(``support_x [B, N*K, ...]``, ``support_y [B, N*K]``, ``query_x [B, N*Q, ...]``, ``query_y [B, N*Q]``)
it returns the gradient, with respect to ``model``'s parameters, of the mean over tasks of the query
cross-entropy after ``steps`` inner SGD steps (learning rate ``inner_lr``, support cross-entropy, all
parameters adapted). ``first_order=True`` gives first-order MAML: the gradient at the adapted weights.

Each peer runs its inner loop the way that library is meant to be used, one task at a time; the outer
gradient is taken with ``torch.autograd.grad`` (same cost as ``loss.backward()``, but it leaves the
model's ``.grad`` untouched). Models and parameters are never modified.

The peers live in a separate virtualenv (``benchmarks/install_peers.sh``). ``PEERS`` holds the adapters
whose library imports; ``PEER_ERRORS`` says why the others could not be loaded.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import io
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["MetaGradientFn", "meta_gradient_naive", "meta_gradient_learn2learn", "meta_gradient_higher",
           "meta_gradient_torchopt", "PEERS", "PEER_ERRORS", "PEER_VERSIONS"]


class MetaGradientFn(Protocol):
    """Signature shared by all adapters."""

    def __call__(self, model: nn.Module, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                 *, inner_lr: float, steps: int, first_order: bool) -> dict[str, Tensor]: ...


PEER_ERRORS: dict[str, str] = {}
PEER_VERSIONS: dict[str, str] = {}


def _load(peer: str, module: str, dist: str) -> ModuleType | None:
    """Import a peer library quietly; record its version, or why it failed, under ``peer``."""
    try:
        # learn2learn imports gym, which prints a deprecation notice to stderr; keep imports silent.
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            mod = importlib.import_module(module)
    except Exception as exc:  # any failure at import time makes the peer unavailable, not the benchmark
        PEER_ERRORS[peer] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return None
    PEER_VERSIONS[peer] = importlib.metadata.version(dist)
    return mod


l2l = _load("learn2learn", "learn2learn", "learn2learn")
higher = _load("higher", "higher", "higher")
torchopt = _load("torchopt", "torchopt", "torchopt")


# --------------------------------------------------------------------------------------------- helpers

def _parameters(model: nn.Module) -> tuple[list[str], list[Tensor]]:
    names, params = zip(*model.named_parameters())
    return list(names), list(params)


def _accumulate(total: list[Tensor] | None, grads: Sequence[Tensor]) -> list[Tensor]:
    if total is None:
        return [g.detach().clone() for g in grads]
    for t, g in zip(total, grads):
        t.add_(g)
    return total


def _mean(names: list[str], total: list[Tensor] | None, n_tasks: int) -> dict[str, Tensor]:
    assert total is not None, "empty meta-batch"
    return {name: g.div_(n_tasks) for name, g in zip(names, total)}


# --------------------------------------------------------------------------------------------- adapters

def meta_gradient_naive(model: nn.Module, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                        *, inner_lr: float, steps: int, first_order: bool) -> dict[str, Tensor]:
    """Plain PyTorch: per-task loop, ``functional_call`` + ``autograd.grad(create_graph=not first_order)``."""
    names, params = _parameters(model)
    total = None
    for sx, sy, qx, qy in zip(support_x, support_y, query_x, query_y):
        fast = params
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, dict(zip(names, fast)), (sx,)), sy)
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
            fast = [w - inner_lr * g for w, g in zip(fast, grads)]
        loss = F.cross_entropy(functional_call(model, dict(zip(names, fast)), (qx,)), qy)
        total = _accumulate(total, torch.autograd.grad(loss, params))
    return _mean(names, total, len(support_x))


def meta_gradient_learn2learn(model: nn.Module, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                              query_y: Tensor, *, inner_lr: float, steps: int,
                              first_order: bool) -> dict[str, Tensor]:
    """learn2learn: ``l2l.algorithms.MAML`` wrapper, ``clone()`` per task, ``adapt()`` per inner step."""
    names, params = _parameters(model)
    maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=first_order)
    total = None
    for sx, sy, qx, qy in zip(support_x, support_y, query_x, query_y):
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(sx), sy))
        loss = F.cross_entropy(learner(qx), qy)
        total = _accumulate(total, torch.autograd.grad(loss, params))
    return _mean(names, total, len(support_x))


def meta_gradient_higher(model: nn.Module, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                         *, inner_lr: float, steps: int, first_order: bool) -> dict[str, Tensor]:
    """higher: ``innerloop_ctx`` per task with a differentiable ``torch.optim.SGD``.

    With ``track_higher_grads=False`` higher detaches the fast weights after every step, so the
    first-order gradient is taken at the adapted weights (``fmodel.parameters()``).
    """
    names, params = _parameters(model)
    inner_opt = torch.optim.SGD(params, lr=inner_lr)
    total = None
    for sx, sy, qx, qy in zip(support_x, support_y, query_x, query_y):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                  track_higher_grads=not first_order) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fmodel(sx), sy))
            loss = F.cross_entropy(fmodel(qx), qy)
            targets = list(fmodel.parameters()) if first_order else params
            total = _accumulate(total, torch.autograd.grad(loss, targets))
    return _mean(names, total, len(support_x))


def meta_gradient_torchopt(model: nn.Module, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                           query_y: Tensor, *, inner_lr: float, steps: int, first_order: bool) -> dict[str, Tensor]:
    """TorchOpt functional API: ``torchopt.sgd`` ``update`` + ``apply_updates(inplace=False)`` on a
    parameter tuple, model run with ``functional_call``.

    Chosen over ``torchopt.MetaSGD``/``FuncOptimizer`` because those always differentiate with
    ``create_graph=True`` (no first-order mode) and MetaSGD needs ``extract/recover_state_dict``
    module surgery per task.
    """
    names, params = _parameters(model)
    optimizer = torchopt.sgd(lr=inner_lr)
    total = None
    for sx, sy, qx, qy in zip(support_x, support_y, query_x, query_y):
        fast = tuple(params)
        state = optimizer.init(fast)
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, dict(zip(names, fast)), (sx,)), sy)
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
            updates, state = optimizer.update(grads, state, inplace=False)
            fast = torchopt.apply_updates(fast, updates, inplace=False)
        loss = F.cross_entropy(functional_call(model, dict(zip(names, fast)), (qx,)), qy)
        total = _accumulate(total, torch.autograd.grad(loss, params))
    return _mean(names, total, len(support_x))


_ADAPTERS: dict[str, tuple[ModuleType | None, MetaGradientFn]] = {
    "learn2learn": (l2l, meta_gradient_learn2learn),
    "higher": (higher, meta_gradient_higher),
    "torchopt": (torchopt, meta_gradient_torchopt),
}
PEERS: dict[str, MetaGradientFn] = {name: fn for name, (mod, fn) in _ADAPTERS.items() if mod is not None}

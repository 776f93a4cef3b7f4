"""Single-task meta-learning: learn the hyperparameters of one training run by gradient, or tune them by search.

A training run is a function ``theta_T = F_w(theta_0, D_train)``: ``T`` steps of (full-batch or minibatch)
gradient descent with learning rate(s) and weight decay. Its hyperparameters ``w`` are held in a flat dict
of tensors, a :data:`Hyper`, with these keys (all optional, positive quantities stored as logarithms):

==========================  ===================================================================
``"log_lr"``                global learning rate, shape ``[]``, or a schedule, shape ``[T]``
``"log_wd"``                weight decay (L2 coefficient), shape ``[]``
``"log_lr/<param>"``        per-parameter-tensor factor on the learning rate of ``<param>``:
                            shape ``[]`` (per layer) or the parameter's shape (per entry)
``"init/<param>"``          the initial value of ``<param>`` (a learned initialisation)
==========================  ===================================================================

The learning rate of parameter ``k`` at step ``t`` is ``exp(log_lr[t]) * exp(log_lr/k)`` and each step is
``theta <- theta - lr * (grad L_train(theta) + wd * theta)``. Because the dict is flat, its tensors go
straight into a ``torch.optim`` optimiser; entries with ``requires_grad=False`` stay fixed.

* :func:`unrolled_train` runs the ``T`` steps keeping the autograd graph (``create_graph=True``), so the
  final parameters, and any validation loss computed from them, are differentiable with respect to every
  hyperparameter: the chain rule through the unrolled loop. Memory grows as ``O(T)``.
* :func:`hypergradient` returns ``L_val(theta_T(w))`` and its gradient with respect to ``w``;
  :func:`meta_fit` runs Adam on ``w`` with it (Maclaurin et al., 2015; Franceschi et al., 2017).
* :func:`hypergradient_descent` adapts the learning rate *online*, within a single run, from the dot
  product of successive gradients (Almeida et al., 1998; Baydin et al., 2018).
* tuning by trial and error, the AutoML baseline these are compared with, is :mod:`metalib.single_task.search`.

Everything is functional (``torch.func.functional_call``): the model's own weights are never modified.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Literal, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..inner import sgd_step
from ..params import Params
from .examples import Data, Examples, LossFn, data_at, loss_on

__all__ = [
    "Hyper", "make_hyper", "hyper_values", "learning_rates", "initial_params", "unrolled_train", "train", "hypergradient",
    "meta_fit", "hypergradient_descent",
]

Hyper = dict[str, Tensor]

LR, WD, LR_PREFIX, INIT_PREFIX = "log_lr", "log_wd", "log_lr/", "init/"


# ------------------------------------------------------------------------------------------ hyperparameters

def make_hyper(params: Mapping[str, Tensor] | None = None, *, lr: float = 0.01, weight_decay: float | None = None,
               schedule: int | None = None, per_param: Literal["tensor", "entry"] | None = None,
               learn_init: bool = False, learn: Sequence[str] | None = None) -> Hyper:
    """Build a :data:`Hyper` of leaf tensors, ready for an optimiser.

    * ``lr``: the initial global learning rate; ``schedule=T`` makes it a per-step schedule ``[T]``;
    * ``weight_decay``: add a learned weight decay starting there (``None``: no weight decay);
    * ``per_param``: add a learning-rate factor (initially 1) per parameter tensor (``"tensor"``, i.e.
      per layer's weight or bias) or per parameter entry (``"entry"``, as in Meta-SGD); needs ``params``;
    * ``learn_init``: make the initialisation a hyperparameter, starting from ``params``;
    * ``learn``: keys (or key prefixes such as ``"log_lr/"``) that get ``requires_grad=True``; default all.

    Tensors take the dtype and device of ``params`` (float32 on CPU without them).
    """
    ref = next(iter(params.values())) if params else torch.empty(0)
    kw = {"dtype": ref.dtype, "device": ref.device}
    if lr <= 0 or (weight_decay is not None and weight_decay <= 0):
        raise ValueError(f"lr and weight_decay must be > 0 (they are stored as logarithms), got {lr}, {weight_decay}")
    hyper: Hyper = {LR: torch.full((schedule,) if schedule else (), math.log(lr), **kw)}
    if weight_decay is not None:
        hyper[WD] = torch.tensor(math.log(weight_decay), **kw)
    if (per_param or learn_init) and not params:
        raise ValueError("per_param and learn_init need the model's params")
    if per_param is not None:
        if per_param not in ("tensor", "entry"):
            raise ValueError(f"per_param must be 'tensor', 'entry' or None, got {per_param!r}")
        for k, p in params.items():
            hyper[LR_PREFIX + k] = torch.zeros(() if per_param == "tensor" else p.shape, **kw)
    if learn_init:
        for k, p in params.items():
            hyper[INIT_PREFIX + k] = p.detach().clone()
    for k, v in hyper.items():
        v.requires_grad_(learn is None or any(k == s or k.startswith(s) for s in learn))
    return hyper


def hyper_values(hyper: Mapping[str, Tensor]) -> dict[str, float]:
    """Readable scalars: ``lr`` and ``wd`` (exponentiated), each per-tensor ``lr/<param>`` factor, and for a
    schedule its first and last learning rates. Per-entry and init tensors are summarised by nothing."""
    out: dict[str, float] = {}
    if LR in hyper:
        lr = hyper[LR].detach().exp()
        if lr.ndim == 0:
            out["lr"] = lr.item()
        else:
            out["lr_first"], out["lr_last"], out["lr_mean"] = lr[0].item(), lr[-1].item(), lr.mean().item()
    if WD in hyper:
        out["wd"] = hyper[WD].detach().exp().item()
    for k, v in hyper.items():
        if k.startswith(LR_PREFIX) and v.ndim == 0:
            out["lr/" + k[len(LR_PREFIX):]] = v.detach().exp().item()
    return out


def learning_rates(hyper: Mapping[str, Tensor], step: int, names: Sequence[str]) -> dict[str, Tensor]:
    """The learning rate of each parameter at ``step`` (differentiable in ``hyper``)."""
    log_lr = hyper[LR]
    if log_lr.ndim == 1:
        if not 0 <= step < log_lr.shape[0]:
            raise IndexError(f"the lr schedule has {log_lr.shape[0]} steps; step {step} is out of range")
        log_lr = log_lr[step]
    return {k: (log_lr + hyper[LR_PREFIX + k]).exp() if LR_PREFIX + k in hyper else log_lr.exp() for k in names}


def initial_params(hyper: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> Params:
    """``params`` with any learned initialisation (``init/<name>``) substituted."""
    return {k: hyper.get(INIT_PREFIX + k, v) for k, v in params.items()}


def _as_hyper(lr: float | Tensor, weight_decay: float | Tensor) -> Hyper:
    hyper = {LR: torch.as_tensor(lr, dtype=torch.float64).log()}
    if float(weight_decay) > 0:
        hyper[WD] = torch.as_tensor(weight_decay, dtype=torch.float64).log()
    return hyper


# ------------------------------------------------------------------------------------------------- training

def _descend(model: nn.Module, theta: Params, hyper: Mapping[str, Tensor], data: Data, steps: int, loss_fn: LossFn,
             create_graph: bool, differentiable: bool, losses: list[float] | None) -> Params:
    """The one training loop of this module: ``theta <- theta - lr_t * (grad + wd * theta)`` with the inner
    loop's SGD step (:func:`metalib.inner.sgd_step`). ``differentiable=False``: plain training, detached."""
    names = list(theta)
    wd = hyper[WD].exp() if WD in hyper else None
    if not differentiable and wd is not None:
        wd = wd.item()
    for t in range(steps):
        with torch.enable_grad():
            theta = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in theta.items()}
            loss = loss_on(model, theta, data_at(data, t), loss_fn)
            grads = torch.autograd.grad(loss, list(theta.values()), create_graph=create_graph and differentiable)
        if losses is not None:
            losses.append(loss.item())
        lrs = learning_rates(hyper, t, names)
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            if not differentiable:
                lrs = {k: v.to(theta[k].dtype) for k, v in lrs.items()}
            step = {k: g + wd * v if wd is not None else g for (k, v), g in zip(theta.items(), grads)}
            theta = sgd_step(theta, step, lrs)
        if not differentiable:
            theta = {k: v.detach() for k, v in theta.items()}
    return theta


def unrolled_train(model: nn.Module, params: Mapping[str, Tensor], hyper: Mapping[str, Tensor], data: Data,
                   steps: int, *, loss_fn: LossFn = F.mse_loss, create_graph: bool = True,
                   losses: list[float] | None = None) -> Params:
    """``steps`` steps of gradient descent from ``params`` (or the learned init in ``hyper``); the final params.

    Step ``t``: ``theta <- theta - lr_t * (grad L(theta; data_t) + wd * theta)`` with the learning rates of
    :func:`learning_rates`. With ``create_graph=True`` the whole loop stays on the autograd graph, so the
    result is differentiable w.r.t. ``hyper`` (second-order terms included; memory ``O(steps)``).
    With ``create_graph=False`` the inner gradients are treated as constants (a first-order approximation
    of the hypergradient, like FOMAML). ``losses``, if given, receives the training loss before each step.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    return _descend(model, initial_params(hyper, params), hyper, data, steps, loss_fn, create_graph, True, losses)


def train(model: nn.Module, params: Mapping[str, Tensor], data: Data, steps: int, *, lr: float | Tensor = 0.01,
          weight_decay: float | Tensor = 0.0, hyper: Mapping[str, Tensor] | None = None, loss_fn: LossFn = F.mse_loss,
          losses: list[float] | None = None) -> Params:
    """Plain (non-differentiable) training: ``steps`` steps of gradient descent, detached results.

    Give either ``lr``/``weight_decay`` or a whole ``hyper`` (e.g. a learned one, detached here).
    """
    hyper = {k: v.detach() for k, v in hyper.items()} if hyper is not None else _as_hyper(lr, weight_decay)
    theta = {k: v.detach() for k, v in initial_params(hyper, params).items()}
    return _descend(model, theta, hyper, data, steps, loss_fn, False, False, losses)


# ------------------------------------------------------------------------------------ learning by gradient

def hypergradient(model: nn.Module, params: Mapping[str, Tensor], hyper: Mapping[str, Tensor], train_data: Data,
                  val_data: Examples, steps: int, *, loss_fn: LossFn = F.mse_loss,
                  create_graph: bool = True) -> tuple[float, dict[str, Tensor]]:
    """``L_val(theta_T(w))`` and its gradient w.r.t. every hyperparameter with ``requires_grad``.

    Reverse mode through the unrolled loop: one forward run of ``steps`` steps, then one backward pass
    (about 2-3x the cost of the run). Returns ``(val_loss, {key: d val_loss / d hyper[key]})``; a
    hyperparameter the loss does not depend on gets zeros.
    """
    val, grads, _ = _hypergradient(model, params, hyper, train_data, val_data, steps, loss_fn, create_graph)
    return val, grads


def _hypergradient(model: nn.Module, params: Mapping[str, Tensor], hyper: Mapping[str, Tensor], train_data: Data,
                   val_data: Examples, steps: int, loss_fn: LossFn,
                   create_graph: bool) -> tuple[float, dict[str, Tensor], Params]:
    learned = {k: v for k, v in hyper.items() if v.requires_grad}
    if not learned:
        raise ValueError("no hyperparameter has requires_grad=True: nothing to differentiate")
    theta = unrolled_train(model, params, hyper, train_data, steps, loss_fn=loss_fn, create_graph=create_graph)
    val = loss_on(model, theta, val_data, loss_fn)
    gs = torch.autograd.grad(val, list(learned.values()), allow_unused=True)
    grads = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(learned.items(), gs)}
    return val.item(), grads, {k: v.detach() for k, v in theta.items()}


def meta_fit(model: nn.Module, params: Mapping[str, Tensor], hyper: Hyper, train_data: Data, val_data: Examples,
             steps: int, *, meta_steps: int, meta_lr: float = 0.05, loss_fn: LossFn = F.mse_loss,
             create_graph: bool = True, clip: float | None = 10.0,
             callback: Callable[[int, Hyper, Params], Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Learn ``hyper`` (in place) by Adam on the unrolled hypergradient: ``meta_steps`` meta-iterations.

    Each meta-iteration costs one differentiable training run of ``steps`` steps plus its backward pass.
    ``clip`` bounds the hypergradient's global norm (unrolled gradients can explode near the edge of
    stability). Returns the history: ``meta_step``, ``val_loss`` (at the hyperparameters *before* that
    step's update), the :func:`hyper_values` and ``time_s``. ``callback(meta_step, hyper, theta)`` may add
    columns; ``theta`` are the trained parameters of that row's run (detached), e.g. to track a test loss.
    A final row evaluates the learned hyperparameters.
    """
    learned = [v for v in hyper.values() if v.requires_grad]
    opt = torch.optim.Adam(learned, lr=meta_lr)
    rows, start, excluded = [], time.perf_counter(), 0.0

    def row(i: int, val: float, theta: Params) -> dict[str, Any]:
        nonlocal excluded
        r = {"meta_step": i, "val_loss": val, **hyper_values(hyper), "time_s": time.perf_counter() - start - excluded}
        if callback is not None:  # the callback's own time is not counted in time_s
            clock = time.perf_counter()
            r.update(callback(i, hyper, theta))
            excluded += time.perf_counter() - clock
        return r

    for i in range(meta_steps):
        val, grads, theta = _hypergradient(model, params, hyper, train_data, val_data, steps, loss_fn, create_graph)
        if not math.isfinite(val) or not all(torch.isfinite(g).all() for g in grads.values()):
            raise FloatingPointError(f"meta-iteration {i}: the unrolled run diverged (val loss {val}); start "
                                     f"from a smaller learning rate or lower meta_lr")
        rows.append(row(i, val, theta))
        for k, g in grads.items():
            hyper[k].grad = g
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(learned, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        final = train(model, params, train_data, steps, hyper=hyper, loss_fn=loss_fn)
        rows.append(row(meta_steps, loss_on(model, final, val_data, loss_fn).item(), final))
    return pd.DataFrame(rows)


def hypergradient_descent(model: nn.Module, params: Mapping[str, Tensor], data: Data, steps: int, *,
                          lr: float = 0.001, beta: float = 0.01, normalized: bool = False,
                          weight_decay: float = 0.0, loss_fn: LossFn = F.mse_loss) -> tuple[Params, pd.DataFrame]:
    """SGD with hypergradient descent on its learning rate (SGD-HD, Baydin et al., 2018): one run, online.

    After step ``t-1`` moved ``theta`` by ``-alpha * g_{t-1}``, the derivative of the new loss with respect
    to ``alpha`` is ``-g_t . g_{t-1}``; one gradient step on ``alpha`` gives::

        alpha_t = alpha_{t-1} + beta * g_t . g_{t-1}          (additive, the paper's SGD-HD)
        alpha_t = alpha_{t-1} * (1 + beta * cos(g_t, g_{t-1}))  (normalized=True: scale-free variant)
        theta_{t+1} = theta_t - alpha_t * g_t

    Successive gradients that agree (positive dot product) mean the step was too short: alpha grows;
    gradients that flip sign mean overshooting: alpha shrinks. Cost: one extra stored gradient, no unroll.
    Returns the final params and a history with ``step``, ``lr`` (used at that step), ``train_loss``.
    """
    theta = {k: v.detach() for k, v in params.items()}
    alpha, prev, rows = float(lr), None, []
    for t in range(steps):
        theta = {k: v.requires_grad_() for k, v in theta.items()}
        with torch.enable_grad():
            loss = loss_on(model, theta, data_at(data, t), loss_fn)
            grads = torch.autograd.grad(loss, list(theta.values()))
        g = torch.cat([gi.flatten() for gi in grads]).detach()
        if weight_decay:
            g = g + weight_decay * torch.cat([v.detach().flatten() for v in theta.values()])
        if prev is not None:
            dot = torch.dot(g, prev).item()
            if normalized:
                alpha *= 1.0 + beta * dot / (g.norm().item() * prev.norm().item() + 1e-30)
            else:
                alpha += beta * dot
        rows.append({"step": t, "lr": alpha, "train_loss": loss.item()})
        with torch.no_grad():
            step = dict(zip(theta, (c.view_as(v) for c, v in zip(g.split([v.numel() for v in theta.values()]),
                                                                 theta.values()))))
            theta = {k: v.detach() for k, v in sgd_step(theta, step, {k: alpha for k in theta}).items()}
        prev = g
    return {k: v.detach() for k, v in theta.items()}, pd.DataFrame(rows)

"""A learned optimiser: single-task meta-learning where ``w`` is the update rule itself.

:mod:`metalib.single_task.hyper` learns a few numbers of SGD (learning rates, weight decay). Here the whole rule
``theta_{t+1} = theta_t + u_w(g_t, state_t)`` is a small network applied to every parameter entry on its own
(coordinatewise, as in Andrychowicz et al., 2016, and the MLP-on-gradient-features optimisers of Metz et al.,
2019-2022). Its inputs for one entry are the gradient ``g`` and its running averages ``m_b`` at a few decay
rates ``b`` (momentum features, kept as optimiser state), each divided by the running RMS of the gradient
(``sqrt`` of a bias-corrected mean square, as in Adam), optionally with the parameter's value. Its output
``d`` gives the update ``u = -exp(log_lr) * d``. A linear skip path starts the rule as Adam (the momentum
feature nearest 0.9, divided by the RMS); the MLP's last layer starts at zero and learns the correction.

* :meth:`LearnedOptimizer.sgd` fixes the output to ``-lr * g``: the rule then reproduces
  :func:`metalib.single_task.hyper.train` exactly, a check of the plumbing.
* :func:`meta_train_optimizer` learns ``w`` by truncated unrolled differentiation: unroll ``unroll`` steps of
  the optimizee (functional parameters, :func:`metalib.single_task.examples.loss_on`), backpropagate a meta-loss
  along the unroll into ``w``, take an Adam step, continue the optimizee from where the truncation stopped (detached),
  and start a new optimizee (a new draw of a :data:`TaskFamily`) every ``horizon`` steps.
* :func:`run_optimizer` trains an optimizee without a graph, with the learned rule or any ``torch.optim``
  optimiser, and returns the loss curve: the comparison with SGD and Adam (tuned by
  :func:`metalib.single_task.search.grid_search`), and the tests of generalisation to longer runs, wider models, other tasks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ArgumentError
from ..models import mlp
from ..params import Params
from ..profiling import History
from .examples import Data, Examples, LossFn, data_at, loss_on

__all__ = ["OptState", "LearnedOptimizer", "Task", "TaskFamily", "regression_family", "unroll",
           "meta_train_optimizer", "run_optimizer"]


@dataclass
class OptState:
    """The optimiser's state for one optimizee: ``moments[name]`` is ``[*param.shape, len(betas) + 1]`` (the
    running averages of the gradient at each decay rate, then its running mean square); ``t`` steps taken."""

    moments: dict[str, Tensor]
    t: int = 0

    def detach(self) -> OptState:
        return OptState({k: v.detach() for k, v in self.moments.items()}, self.t)


class LearnedOptimizer(nn.Module):
    """A coordinatewise update rule ``u = -exp(log_lr) * (skip(f) + MLP(f))`` on per-entry features ``f``.

    ``hidden``: the MLP's widths (SiLU, smooth so finite differences hold); ``betas``: momentum decay rates;
    ``beta2``: decay of the mean square; ``lr``: initial ``exp(log_lr)``; ``use_params``: add the parameter's
    value to the features. Build it in float64 with ``.double()`` for exact checks.
    """

    def __init__(self, hidden: Sequence[int] = (32,), *, betas: Sequence[float] = (0.5, 0.9, 0.99),
                 beta2: float = 0.999, lr: float = 1e-2, eps: float = 1e-8, use_params: bool = False, seed: int = 0):
        super().__init__()
        if not betas or not all(0 <= b < 1 for b in (*betas, beta2)):
            raise ArgumentError(f"betas and beta2 must lie in [0, 1), got betas={tuple(betas)}, beta2={beta2}; "
                                "pass e.g. betas=(0.5, 0.9, 0.99)")
        if lr <= 0 or any(h < 1 for h in hidden):
            raise ArgumentError(f"lr must be > 0 and hidden widths >= 1, got lr={lr}, hidden={tuple(hidden)}")
        self.betas, self.beta2, self.eps, self.use_params = tuple(betas), beta2, eps, use_params
        self.fixed_lr: float | None = None  # set by sgd(): the output is -fixed_lr * g
        n_in = 1 + len(self.betas) + int(use_params)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layers: list[nn.Module] = []
            for a, b in zip((n_in, *hidden), hidden):
                layers += [nn.Linear(a, b), nn.SiLU()]
            layers.append(nn.Linear(hidden[-1] if hidden else n_in, 1))
            self.mlp = nn.Sequential(*layers)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.skip = nn.Linear(n_in, 1, bias=False)
        nn.init.zeros_(self.skip.weight)
        with torch.no_grad():  # start as Adam: m_b / rms at the decay rate nearest 0.9
            self.skip.weight[0, 1 + min(range(len(self.betas)), key=lambda i: abs(self.betas[i] - 0.9))] = 1.0
        self.log_lr = nn.Parameter(torch.tensor(math.log(lr)))

    @classmethod
    def sgd(cls, lr: float) -> LearnedOptimizer:
        """The rule with its output fixed to ``-lr * g`` (plain SGD; its weights are unused)."""
        if lr <= 0:
            raise ArgumentError(f"lr must be > 0, got {lr}")
        opt = cls()
        opt.fixed_lr = float(lr)
        return opt

    @property
    def n_features(self) -> int:
        return self.skip.in_features

    def init_state(self, params: Mapping[str, Tensor]) -> OptState:
        """Zero moments for ``params`` (in their dtype and device)."""
        return OptState({k: p.new_zeros(*p.shape, len(self.betas) + 1).detach() for k, p in params.items()})

    def features(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
                 state: OptState) -> tuple[dict[str, Tensor], OptState]:
        """Per-entry features ``[*shape, n_features]`` of each parameter, and the state after this gradient."""
        t, feats, moments = state.t + 1, {}, {}
        decay = torch.tensor([*self.betas, self.beta2], dtype=torch.float64)
        for k, g in grads.items():
            d = decay.to(g)
            new = d * state.moments[k] + (1 - d) * torch.stack([g] * len(self.betas) + [g * g], -1)
            moments[k] = new
            corrected = new / (1 - decay ** t).to(g)  # Adam's bias correction
            rms = (corrected[..., -1:] + torch.finfo(g.dtype).tiny).sqrt() + self.eps  # tiny: no NaN gradient at g = 0
            f = [g.unsqueeze(-1) / rms, corrected[..., :-1] / rms]
            if self.use_params:
                f.append(params[k].unsqueeze(-1))
            feats[k] = torch.cat(f, -1)
        return feats, OptState(moments, t)

    def updates(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
                state: OptState) -> tuple[dict[str, Tensor], OptState]:
        """The update ``u`` of every parameter (same shapes) and the new state; differentiable in ``w``."""
        feats, state = self.features(params, grads, state)
        if self.fixed_lr is not None:
            return {k: -(self.fixed_lr * g) for k, g in grads.items()}, state
        flat = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats.values()])  # one MLP call for all entries
        w_dtype = self.log_lr.dtype
        out = (self.skip(flat.to(w_dtype)) + self.mlp(flat.to(w_dtype))).squeeze(-1) * -self.log_lr.exp()
        sizes = [g.numel() for g in grads.values()]
        return {k: u.view_as(g).to(g.dtype) for (k, g), u in zip(grads.items(), out.split(sizes))}, state

    def step(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor],
             state: OptState) -> tuple[Params, OptState]:
        """``theta + u``: the new parameters and state."""
        u, state = self.updates(params, grads, state)
        return {k: p + u[k] for k, p in params.items()}, state


# --------------------------------------------------------------------------------------------- optimizees

@dataclass
class Task:
    """One optimizee: a model, its initial ``params``, training ``data`` (``(x, y)`` or ``step -> (x, y)``)
    and optional validation data ``val``."""

    model: nn.Module
    params: Params
    data: Data
    val: Examples | None = None
    loss_fn: LossFn = field(default=F.mse_loss)


#: A narrow family of optimizees: ``seed -> Task`` (a new init and/or a new data set per seed).
TaskFamily = Callable[[int], Task]


def regression_family(sizes: tuple[int, ...] = (4, 16, 1), *, n_train: int = 32, n_val: int = 64,
                      batch: int | None = None, dtype: torch.dtype = torch.float32) -> TaskFamily:
    """Tasks ``y = sin(x @ a) + 0.5 * (x @ b)`` with random ``a``, ``b`` and a fresh :func:`metalib.models.mlp`
    of ``sizes`` per seed; ``batch``: minibatches of that size (drawn from ``n_train`` points) instead of
    full-batch training."""
    if batch is not None and not 1 <= batch <= n_train:
        raise ArgumentError(f"batch must be in [1, n_train={n_train}] or None, got {batch}")

    def make(seed: int) -> Task:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n_train + n_val, sizes[0], generator=g, dtype=dtype)
        a, b = (torch.randn(sizes[0], sizes[-1], generator=g, dtype=dtype) for _ in range(2))
        y = torch.sin(x @ a) + 0.5 * (x @ b)
        model = mlp(sizes, seed=seed).to(dtype)
        params = {k: v.detach() for k, v in model.named_parameters()}
        xt, yt = x[:n_train], y[:n_train]
        if batch is None:
            data: Data = (xt, yt)
        else:
            def data(step: int) -> Examples:
                idx = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed * 100003 + step))[:batch]
                return xt[idx], yt[idx]
        return Task(model, params, data, (x[n_train:], y[n_train:]))
    return make


# ------------------------------------------------------------------------------------------ meta-training

Objective = Literal["train", "final", "val"]


def unroll(opt: LearnedOptimizer, task: Task, params: Params, state: OptState, steps: int, *,
           objective: Objective = "train", second_order: bool = True) -> tuple[Tensor, Params, OptState]:
    """``steps`` differentiable steps of ``task``'s training from ``(params, state)``; returns the meta-loss
    and the final params and state (on the graph). The meta-loss is the mean training loss after each step
    (``"train"``), the final training loss (``"final"``) or the final validation loss (``"val"``).
    ``second_order=False`` treats the optimizee's gradients as constants (Andrychowicz et al.'s shortcut)."""
    if steps < 1:
        raise ArgumentError(f"unroll steps must be >= 1, got {steps}")
    if objective not in ("train", "final", "val") or (objective == "val" and task.val is None):
        raise ArgumentError(f"objective must be 'train', 'final' or 'val' (which needs task.val), got {objective!r}")
    theta, losses = dict(params), []
    for i in range(steps + 1):
        with torch.enable_grad():  # under no_grad (e.g. finite differences) the optimizee still needs gradients
            theta = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in theta.items()}
            loss = loss_on(task.model, theta, data_at(task.data, state.t), task.loss_fn)
            if i == steps:
                losses.append(loss)
                break
            grads = torch.autograd.grad(loss, list(theta.values()), create_graph=second_order, retain_graph=True)
        if i > 0:
            losses.append(loss)
        theta, state = opt.step(theta, dict(zip(theta, grads)), state)
    if objective == "val":
        meta = loss_on(task.model, theta, task.val, task.loss_fn)
    else:
        meta = torch.stack(losses).mean() if objective == "train" else losses[-1]
    return meta, theta, state


def meta_train_optimizer(opt: LearnedOptimizer, tasks: TaskFamily | Task, *, meta_steps: int, unroll_steps: int = 10,
                         horizon: int = 100, meta_lr: float = 1e-3, objective: Objective = "train",
                         second_order: bool = True, clip: float | None = 1.0, seed: int = 0,
                         callback: Callable[[int, LearnedOptimizer], Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Learn ``opt``'s weights (in place) by Adam on truncated unrolled meta-gradients.

    Each meta-step unrolls ``unroll_steps`` optimizee steps (:func:`unroll`), backpropagates the meta-loss
    into ``opt``, clips its norm to ``clip`` and steps; the optimizee continues from there (detached) until
    ``horizon`` steps, then a new one starts: ``tasks(seed + k)`` for the k-th, or the same ``Task`` again.
    A non-finite meta-loss or meta-gradient skips the update and restarts the optimizee. Returns one row per meta-step:
    ``meta_step``, ``task``, ``t`` (the optimizee's step at the start of the unroll), ``meta_loss``, ``time_s``
    and any columns ``callback(meta_step, opt)`` returns (its time not counted).
    """
    if opt.fixed_lr is not None:
        raise ArgumentError("an SGD-mode LearnedOptimizer (LearnedOptimizer.sgd) has nothing to learn; "
                            "build one with LearnedOptimizer(...)")
    if meta_steps < 0 or unroll_steps < 1 or horizon < unroll_steps:
        raise ArgumentError(f"need meta_steps >= 0 and 1 <= unroll_steps <= horizon, got meta_steps={meta_steps}, "
                            f"unroll_steps={unroll_steps}, horizon={horizon}")
    family: TaskFamily = tasks if callable(tasks) else (lambda _seed: tasks)
    adam = torch.optim.Adam(opt.parameters(), lr=meta_lr)
    history, k, task, theta, state = History(), -1, None, None, None
    for i in range(meta_steps):
        if task is None or state.t + unroll_steps > horizon:
            k += 1
            task = family(seed + k)
            theta = {n: v.detach() for n, v in task.params.items()}
            state = opt.init_state(theta)
        t0 = state.t
        meta, theta, state = unroll(opt, task, theta, state, unroll_steps, objective=objective,
                                    second_order=second_order)
        adam.zero_grad(set_to_none=True)
        if math.isfinite(meta.item()):
            meta.backward()
            norm = nn.utils.clip_grad_norm_(list(opt.parameters()), math.inf if clip is None else clip)
        if math.isfinite(meta.item()) and math.isfinite(norm.item()):
            adam.step()
            theta, state = {n: v.detach() for n, v in theta.items()}, state.detach()
        else:  # a diverged optimizee or meta-gradient: no update, a new optimizee
            task = None
        history.add({"meta_step": i, "task": k, "t": t0, "meta_loss": meta.item()}, callback, i, opt)
    return history.frame()


# ------------------------------------------------------------------------------------------- evaluation

OptimizerFactory = Callable[[list[Tensor]], torch.optim.Optimizer]


def run_optimizer(opt: LearnedOptimizer | OptimizerFactory, task: Task, steps: int, *,
                  val_every: int | None = None) -> tuple[Params, pd.DataFrame]:
    """Train ``task``'s optimizee for ``steps`` steps without a graph; returns the final params and the curve.

    ``opt``: a :class:`LearnedOptimizer`, or a factory such as ``lambda ps: torch.optim.Adam(ps, lr=1e-2)``.
    The curve has ``step`` 0..steps and ``train_loss`` (on that step's batch, before the step; the last row
    after the last step); with ``task.val``, ``val_loss`` every ``val_every`` steps and at the end (else NaN).
    Non-finite losses are recorded as they are (a diverged run).
    """
    if steps < 0 or (val_every is not None and val_every < 1):
        raise ArgumentError(f"steps must be >= 0 and val_every >= 1 or None, got steps={steps}, val_every={val_every}")
    theta = {k: v.detach().clone().requires_grad_() for k, v in task.params.items()}
    learned = isinstance(opt, LearnedOptimizer)
    state = opt.init_state(theta) if learned else None
    torch_opt = None if learned else opt(list(theta.values()))
    rows = []
    for t in range(steps + 1):
        with torch.enable_grad():
            loss = loss_on(task.model, theta, data_at(task.data, t), task.loss_fn)
        row = {"step": t, "train_loss": loss.item(), "val_loss": math.nan}
        if task.val is not None and (t == steps or (val_every is not None and t % val_every == 0)):
            with torch.no_grad():
                row["val_loss"] = loss_on(task.model, theta, task.val, task.loss_fn).item()
        rows.append(row)
        if t == steps:
            break
        grads = torch.autograd.grad(loss, list(theta.values()))
        with torch.no_grad():
            if learned:
                new, state = opt.step(theta, dict(zip(theta, grads)), state)
                theta = {k: v.requires_grad_() for k, v in new.items()}
            else:
                for p, g in zip(theta.values(), grads):
                    p.grad = g
                torch_opt.step()
    return {k: v.detach() for k, v in theta.items()}, pd.DataFrame(rows)

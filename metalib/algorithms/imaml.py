"""iMAML (Rajeswaran, Finn, Kakade and Levine, 2019): the meta-gradient through the inner problem's *solution*.

Each task solves a proximally regularised inner problem from the shared start ``theta``::

    phi*(theta) = argmin_phi  L_support(phi) + lambda / 2 * |phi - theta|^2

(approximately: ``steps`` SGD steps of the one inner loop, :class:`~metalib.inner.InnerConfig` with ``proximal``).
At the solution the implicit function theorem gives ``d phi* / d theta = (I + H / lambda)^-1`` with ``H`` the
Hessian of the support loss at ``phi*``, so the meta-gradient of the query loss is::

    g = (I + H / lambda)^-1  grad L_query(phi*)

found by conjugate gradient on Hessian-vector products, all tasks of the meta-batch at once. Nothing of the
inner loop's graph is kept: memory does not grow with the number of inner steps, unlike MAML's.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from ..inner import InnerConfig, adapt, forward_adapted
from ..problems import Problem, get_problem
from ..tasks import TaskBatch
from ..params import Params
from .gradient import GradientMetaLearner, InnerLoopSettings, INNER_LR_HELP, INNER_STEPS_HELP
from .registry import LearnerSpec, register, setting

__all__ = ["IMAML", "imaml", "batched_cg", "UNSOLVED_RATIO", "IMAMLSettings"]

UNSOLVED_RATIO = 0.01  # proximal gradient at phi over its value at theta above which iMAML warns


def _dot(a: Params, b: Params) -> Tensor:
    """Per-task inner products ``[B]`` of two dicts of ``[B, ...]`` tensors."""
    return sum((a[k] * b[k]).flatten(1).sum(1) for k in a)


def batched_cg(matvec: Callable[[Params], Params], b: Params, iters: int, tol: float = 1e-10,
               info: dict | None = None) -> Params:
    """Solve ``A x = b`` for every task at once by conjugate gradient (``A`` symmetric positive definite per task,
    applied by ``matvec``); ``b`` and the result are dicts of ``[B, ...]`` tensors. A task whose residual norm is
    below ``tol`` times its ``|b|`` stops moving.

    A task whose ``A`` shows a direction of zero or negative curvature (``p^T A p <= 0``: not positive definite,
    e.g. a Hessian eigenvalue below ``-lambda``) stops there, as truncated CG does, instead of diverging: it keeps
    its current ``x``, or ``b`` itself (the first-order answer) if that happens at the first iteration. ``info``
    (if given) receives ``residual`` (per task ``|b - A x| / |b|``; NaN for a task given ``b`` at the first
    iteration) and ``indefinite`` (per task, bool)."""
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r = {k: v.clone() for k, v in b.items()}
    p = {k: v.clone() for k, v in b.items()}
    rs = _dot(r, r)
    start, floor = rs.clone(), tol ** 2 * rs
    stopped = torch.zeros_like(rs, dtype=torch.bool)
    fallback = torch.zeros_like(rs, dtype=torch.bool)
    for i in range(iters):
        ap = matvec(p)
        curvature = _dot(p, ap)
        bad = (curvature <= 0) & ~stopped & (rs > floor)
        if i == 0 and bool(bad.any()):  # no step taken yet: fall back to b for those tasks
            x = {k: torch.where(_bcast(bad, x[k]).bool(), b[k], x[k]) for k in x}
            fallback = bad
        stopped = stopped | bad
        active = (rs > floor) & ~stopped
        alpha = torch.where(active, rs / curvature.where(active, torch.ones_like(rs)), torch.zeros_like(rs))
        x = {k: x[k] + _bcast(alpha, x[k]) * p[k] for k in x}
        r = {k: r[k] - _bcast(alpha, r[k]) * ap[k] for k in r}
        rs_new = _dot(r, r)
        beta = torch.where(active, rs_new / rs.where(active, torch.ones_like(rs)), torch.zeros_like(rs))
        p = {k: r[k] + _bcast(beta, p[k]) * p[k] for k in p}
        rs = torch.where(active, rs_new, rs)
    if info is not None:  # CG's residual is that of its iterate; a task given b instead has none (NaN)
        ratio = (rs / start.clamp_min(torch.finfo(rs.dtype).tiny)).sqrt()
        info["residual"] = torch.where(fallback, torch.full_like(ratio, float("nan")), ratio)
        info["indefinite"] = stopped
    return x


def _norm(a: Params) -> Tensor:
    """Per-task Euclidean norm ``[B]`` over every tensor of ``a``."""
    return _dot(a, a).sqrt()


def _bcast(per_task: Tensor, like: Tensor) -> Tensor:
    return per_task.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class IMAML(GradientMetaLearner):
    """MAML's learner with the implicit meta-gradient; ``lam`` is the proximal weight, ``cg_steps`` the conjugate
    gradient iterations, ``cg_damping`` an extra weight of the identity in the implicit gradient only (it solves
    ``(I + H / (lam + cg_damping)) g = grad``; 0 is the paper's equation). Test-time adaptation solves the same
    regularised inner problem."""

    def __init__(self, model: nn.Module, inner: InnerConfig, *, cg_steps: int = 5, cg_damping: float = 0.0):
        if inner.proximal <= 0:
            raise ArgumentError(f"iMAML needs a proximal weight lam > 0, got {inner.proximal}")
        if cg_steps < 1:
            raise ArgumentError(f"cg_steps must be >= 1, got {cg_steps}")
        if not cg_damping >= 0:
            raise ArgumentError(f"cg_damping must be >= 0, got {cg_damping}")
        super().__init__(model, inner, name="imaml")
        self.cg_steps, self.cg_damping = cg_steps, float(cg_damping)
        self._warned: dict[str, bool] = {}

    def meta_gradient(self, batch: TaskBatch) -> tuple[Params, dict[str, float]]:
        lam, problem = self.inner.proximal, self.problem
        curvature = lam + self.cg_damping  # the implicit gradient's weight of the identity against H
        theta = {k: v.detach() for k, v in self.params().items()}
        with torch.no_grad():  # the inner solution: no graph, whatever the number of steps
            phi = adapt(self.model, theta, batch, replace(self.inner, first_order=True, adapt_only=None))
        phi = {k: v.detach().requires_grad_() for k, v in phi.items()}
        with torch.enable_grad():
            out = forward_adapted(self.model, phi, batch.query_x)
            query = problem.task_loss(out, batch.query_y)
            v = dict(zip(phi, torch.autograd.grad(query.sum(), list(phi.values()))))
            support = problem.task_loss(forward_adapted(self.model, phi, batch.support_x, True), batch.support_y)
            g = torch.autograd.grad(support.sum(), list(phi.values()), create_graph=True)

            def matvec(p: Params) -> Params:  # (I + H / (lam + cg_damping)) p, per task
                hp = torch.autograd.grad(g, list(phi.values()), grad_outputs=[p[k] for k in phi], retain_graph=True)
                return {k: p[k] + h / curvature for k, h in zip(phi, hp)}
            cg: dict = {}
            x = batched_cg(matvec, v, self.cg_steps, info=cg)
            # how far the inner problem is from solved: the proximal gradient at phi against its value at theta
            # (the implicit gradient assumes it is zero)
            residual = _norm({k: gk.detach() + lam * (phi[k].detach() - theta[k]) for k, gk in zip(phi, g)})
            start = _norm(self._support_gradient(theta, batch))
        grads = {k: x[k].mean(0).detach() for k in phi}
        score = problem.task_score(out.detach(), batch.query_y).mean()
        ratio = (residual / start.clamp_min(torch.finfo(start.dtype).tiny)).mean().item()
        self._warn_unsolved(ratio, cg["indefinite"].float().mean().item())
        return grads, {"loss": query.mean().item(), problem.score_name: score.item(), "inner_residual": ratio,
                       "cg_residual": cg["residual"].nan_to_num(1.0).mean().item(),  # given b: counted as unsolved (1)
                       "cg_indefinite": cg["indefinite"].float().mean().item()}

    def _support_gradient(self, theta: Params, batch: TaskBatch) -> Params:
        """Per-task gradient of the support loss at the shared start (the proximal gradient there)."""
        start = {k: v.expand(batch.batch_size, *v.shape).clone().requires_grad_() for k, v in theta.items()}
        loss = self.problem.task_loss(forward_adapted(self.model, start, batch.support_x, True), batch.support_y)
        return dict(zip(start, torch.autograd.grad(loss.sum(), list(start.values()))))

    def _warn_unsolved(self, ratio: float, indefinite: float) -> None:
        """Warn once per learner when the implicit gradient's assumptions visibly fail."""
        if ratio > UNSOLVED_RATIO and not self._warned.get("unsolved"):
            self._warned["unsolved"] = True
            warnings.warn(f"iMAML's inner problem is not solved: its proximal gradient is {ratio:.0%} of its value at "
                          f"the start (the implicit meta-gradient assumes 0); raise the inner steps or the inner "
                          f"learning rate (history column train_inner_residual)", stacklevel=3)
        if indefinite > 0 and not self._warned.get("indefinite"):
            self._warned["indefinite"] = True
            warnings.warn(f"iMAML: I + H / lambda is not positive definite for {indefinite:.0%} of the tasks (a Hessian "
                          f"eigenvalue below -lambda); conjugate gradient stopped early for them; raise lambda "
                          f"or cg_damping (history column train_cg_indefinite)", stacklevel=3)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "lambda": self.inner.proximal, "cg_steps": self.cg_steps,
                "cg_damping": self.cg_damping}


def imaml(model: nn.Module, *, inner_lr: float = 0.1, steps: int = 5, lam: float = 1.0, cg_steps: int = 5,
          cg_damping: float = 0.0, problem: str | Problem = "classification", strategy: str = "auto") -> IMAML:
    """iMAML: ``steps`` SGD steps of size ``inner_lr`` on the support loss plus ``lam / 2 |phi - theta|^2``, and
    the implicit meta-gradient by ``cg_steps`` conjugate-gradient iterations."""
    cfg = InnerConfig(steps=steps, lr=inner_lr, first_order=True, strategy=strategy, problem=get_problem(problem),
                      proximal=lam)
    return IMAML(model, cfg, cg_steps=cg_steps, cg_damping=cg_damping)


@dataclass(frozen=True, kw_only=True)
class IMAMLSettings(InnerLoopSettings):
    inner_lr: float = setting(0.1, INNER_LR_HELP, low=0, strict=True, regression=0.01)
    inner_steps: int = setting(5, INNER_STEPS_HELP, low=0)
    proximal: float = setting(1.0, "iMAML: lambda of the proximal term lambda/2 |phi - theta|^2 of the inner problem",
                              low=0, strict=True)
    cg_steps: int = setting(5, "iMAML: conjugate-gradient iterations of the implicit gradient", low=1)
    cg_damping: float = setting(0.0, "iMAML: added to lambda in the implicit gradient only, which then solves "
                                "(I + H / (lambda + cg_damping)) g = grad; 0: the paper's equation", low=0)


register(LearnerSpec(
    "imaml", IMAMLSettings,
    lambda model, s, ctx: imaml(model, inner_lr=s.inner_lr, steps=s.inner_steps, lam=s.proximal, cg_steps=s.cg_steps,
                                cg_damping=s.cg_damping, problem=ctx.problem, strategy=ctx.strategy),
    "iMAML: the implicit meta-gradient by conjugate gradient on Hessian-vector products"))

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

from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from ..inner import InnerConfig, adapt, forward_adapted
from ..problems import Problem, get_problem
from ..tasks import TaskBatch
from ..types import Grads, Params
from .gradient import GradientMetaLearner

__all__ = ["IMAML", "imaml", "batched_cg"]


def _dot(a: Params, b: Params) -> Tensor:
    """Per-task inner products ``[B]`` of two dicts of ``[B, ...]`` tensors."""
    return sum((a[k] * b[k]).flatten(1).sum(1) for k in a)


def batched_cg(matvec: Callable[[Params], Params], b: Params, iters: int, tol: float = 1e-10) -> Params:
    """Solve ``A x = b`` for every task at once by conjugate gradient (``A`` symmetric positive definite per task,
    applied by ``matvec``); ``b`` and the result are dicts of ``[B, ...]`` tensors. A task whose residual norm is
    below ``tol`` times its ``|b|`` stops moving."""
    x = {k: torch.zeros_like(v) for k, v in b.items()}
    r = {k: v.clone() for k, v in b.items()}
    p = {k: v.clone() for k, v in b.items()}
    rs = _dot(r, r)
    floor = tol ** 2 * rs
    for _ in range(iters):
        ap = matvec(p)
        active = rs > floor
        alpha = torch.where(active, rs / _dot(p, ap).where(active, torch.ones_like(rs)), torch.zeros_like(rs))
        x = {k: x[k] + _bcast(alpha, x[k]) * p[k] for k in x}
        r = {k: r[k] - _bcast(alpha, r[k]) * ap[k] for k in r}
        rs_new = _dot(r, r)
        beta = torch.where(active, rs_new / rs.where(active, torch.ones_like(rs)), torch.zeros_like(rs))
        p = {k: r[k] + _bcast(beta, p[k]) * p[k] for k in p}
        rs = rs_new
    return x


def _bcast(per_task: Tensor, like: Tensor) -> Tensor:
    return per_task.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class IMAML(GradientMetaLearner):
    """MAML's learner with the implicit meta-gradient; ``lam`` is the proximal weight, ``cg_steps`` the conjugate
    gradient iterations. Test-time adaptation solves the same regularised inner problem."""

    def __init__(self, model: nn.Module, inner: InnerConfig, *, cg_steps: int = 5):
        if inner.proximal <= 0:
            raise ArgumentError(f"iMAML needs a proximal weight lam > 0, got {inner.proximal}")
        if cg_steps < 1:
            raise ArgumentError(f"cg_steps must be >= 1, got {cg_steps}")
        super().__init__(model, inner, name="imaml")
        self.cg_steps = cg_steps

    def meta_gradient(self, batch: TaskBatch) -> tuple[Grads, dict[str, float]]:
        lam, problem = self.inner.proximal, self.problem
        theta = {k: v.detach() for k, v in self.params().items()}
        with torch.no_grad():  # the inner solution: no graph, whatever the number of steps
            phi = adapt(self.model, theta, batch, InnerConfig(self.inner.steps, self.inner.lr, True, None,
                                                              self.inner.strategy, problem, lam))
        phi = {k: v.detach().requires_grad_() for k, v in phi.items()}
        with torch.enable_grad():
            out = forward_adapted(self.model, phi, batch.query_x)
            query = problem.task_loss(out, batch.query_y)
            v = dict(zip(phi, torch.autograd.grad(query.sum(), list(phi.values()))))
            support = problem.task_loss(forward_adapted(self.model, phi, batch.support_x, True), batch.support_y)
            g = torch.autograd.grad(support.sum(), list(phi.values()), create_graph=True)

            def matvec(p: Params) -> Params:  # (I + H / lam) p, per task
                hp = torch.autograd.grad(g, list(phi.values()), grad_outputs=[p[k] for k in phi], retain_graph=True)
                return {k: p[k] + h / lam for k, h in zip(phi, hp)}
            x = batched_cg(matvec, v, self.cg_steps)
        grads = {k: x[k].mean(0).detach() for k in phi}
        score = problem.task_score(out.detach(), batch.query_y).mean()
        return grads, {"loss": query.mean().item(), problem.score_name: score.item()}

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "lambda": self.inner.proximal, "cg_steps": self.cg_steps}


def imaml(model: nn.Module, *, inner_lr: float = 0.1, steps: int = 5, lam: float = 1.0, cg_steps: int = 5,
          problem: str | Problem = "classification", strategy: str = "auto") -> IMAML:
    """iMAML: ``steps`` SGD steps of size ``inner_lr`` on the support loss plus ``lam / 2 |phi - theta|^2``, and
    the implicit meta-gradient by ``cg_steps`` conjugate-gradient iterations."""
    cfg = InnerConfig(steps, inner_lr, True, None, strategy, get_problem(problem), lam)
    return IMAML(model, cfg, cg_steps=cg_steps)

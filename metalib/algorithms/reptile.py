"""Reptile (Nichol et al., 2018): adapt with plain SGD, then move the initialisation toward the result."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..inner import InnerConfig, adapt, check_batchnorm, forward_adapted, task_losses
from ..problems import Problem, get_problem
from ..tasks import TaskBatch
from ..params import Params
from .base import MetaLearner, adapted_outputs, make_torch_optimizer, check_head
from .gradient import InnerLoopSettings, INNER_LR_HELP, INNER_STEPS_HELP
from .registry import LearnerSpec, register, setting

__all__ = ["Reptile", "reptile", "ReptileSettings"]


class Reptile(MetaLearner):
    """The pseudo-gradient ``theta - mean_i(phi_i)`` is returned as the meta-gradient, so an outer SGD
    step with learning rate ``epsilon`` gives ``theta <- theta + epsilon * (mean_i phi_i - theta)``."""

    def __init__(self, model: nn.Module, inner: InnerConfig, name: str = "reptile"):
        super().__init__()
        self.model = model
        self.inner = replace(inner, first_order=True)
        self.problem = inner.problem
        self.name = name
        check_head(model, self.problem, None, name)

    @property
    def test_steps(self) -> int:
        return self.inner.steps

    def check_tasks(self, sampler) -> None:
        check_head(self.model, self.problem, getattr(sampler, "ways", None), self.name)

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def default_optimizer(self, name: str | None = None, lr: float | None = None) -> torch.optim.Optimizer:
        """SGD(1.0): the outer step size epsilon of the paper (Adam also works: pass ``name="adam"``)."""
        name = name or "sgd"
        return make_torch_optimizer(list(self.meta_parameters().values()), name, lr,
                                    default_lr=1.0 if name == "sgd" else 1e-3)

    def meta_gradient(self, batch: TaskBatch) -> tuple[Params, dict[str, float]]:
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        fast = adapt(self.model, params, batch, self.inner)
        grads = {k: params[k] - fast[k].mean(0) for k in params}
        with torch.no_grad():  # the training score comes from the same adapted weights, not a second adaptation
            out = forward_adapted(self.model, fast, batch.query_x)
        scores = self.problem.task_score(out, batch.query_y)
        return grads, {self.problem.score_name: scores.mean().item()}

    def _test_time(self, steps: int | None) -> tuple[InnerConfig, dict]:
        # test-time adaptation takes the whole support set at every step (a 1-shot set has no minibatches)
        cfg = replace(self.inner, steps=self.inner.steps if steps is None else steps, support_batches=None)
        return cfg, {k: v.detach() for k, v in self.model.named_parameters()}

    def evaluate_batch(self, batch: TaskBatch, steps: int | None = None, batchnorm: str = "transductive") -> Tensor:
        cfg, params = self._test_time(steps)
        if check_batchnorm(batchnorm) == "inductive":
            return self.inductive_scores(self.model, adapt(self.model, params, batch, cfg), batch)
        return task_losses(self.model, params, batch, cfg)[1]

    def query_outputs(self, batch: TaskBatch, steps: int | None = None, batchnorm: str = "transductive") -> Tensor:
        cfg, params = self._test_time(steps)
        return adapted_outputs(self.model, adapt(self.model, params, batch, cfg), batch, batchnorm)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "inner_steps": self.inner.steps, "inner_lr": self.inner.lr,
                "inner_batches": self.inner.support_batches}


def reptile(model: nn.Module, *, inner_lr: float = 0.4, steps: int = 5, problem: str | Problem = "classification",
            strategy: str = "auto", inner_batches: int | None = None) -> Reptile:
    """Reptile with ``steps`` inner SGD steps at ``inner_lr``; its default outer optimiser is SGD.

    ``inner_batches=n`` splits each training support set into ``n`` class-balanced minibatches that the inner
    steps take in turn, as Nichol et al. do (the gradients of different minibatches are what makes Reptile
    more than joint training: their inner products enter its update); ``None`` adapts on the whole support
    set at every step. Test-time adaptation always uses the whole support set."""
    return Reptile(model, InnerConfig(steps=steps, lr=inner_lr, first_order=True, strategy=strategy, problem=get_problem(problem),
                                      support_batches=inner_batches))


@dataclass(frozen=True, kw_only=True)
class ReptileSettings(InnerLoopSettings):
    inner_lr: float = setting(0.4, INNER_LR_HELP, low=0, strict=True, regression=0.01)
    inner_steps: int = setting(5, INNER_STEPS_HELP, low=0)
    inner_batches: int | None = setting(None, "Reptile: split each training support set into N class-balanced "
                                              "minibatches, one per inner step in turn (Nichol et al.); default: the "
                                              "whole support set at every step", kind=int, low=1)

    def check_task(self, problem: str, shots: int | None = None) -> str | None:
        if self.inner_batches is not None and shots is not None and self.inner_batches > shots:
            return (f"inner_batches {self.inner_batches} needs at least that many shots per class (got {shots}): "
                    f"each minibatch takes one example of every class or more")
        return super().check_task(problem, shots)


register(LearnerSpec(
    "reptile", ReptileSettings,
    lambda model, s, ctx: reptile(model, inner_lr=s.inner_lr, steps=s.inner_steps, inner_batches=s.inner_batches,
                                  problem=ctx.problem, strategy=ctx.strategy),
    "Reptile: move the initialisation toward each task's adapted weights (outer SGD by default)", optimizer="sgd"))

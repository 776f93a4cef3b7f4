"""Evaluation: scores on a fixed set of test tasks with a 95% interval, and adaptation curves."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .algorithms import MetaLearner
from .execution import LOCAL, Execution
from .inner import check_batchnorm, forward_adapted
from .tasks import TaskBatch, check_count as _check_count
from .utils import show_progress

__all__ = ["EvalResult", "evaluate", "paired_difference", "confidence_interval", "adaptation_curve", "adapted_predictions"]


def confidence_interval(values: Tensor, z: float = 1.96, dim: int | None = None) -> tuple:
    """Mean and half-width of the normal-approximation 95% interval of the mean (over ``dim``: tensors)."""
    v = torch.as_tensor(values).double()
    if dim is not None:
        n = v.shape[dim]
        half = z * v.std(dim, unbiased=True) / math.sqrt(n) if n > 1 else torch.full_like(v.mean(dim), math.nan)
        return v.mean(dim), half
    v = v.flatten()
    if v.numel() < 2:
        return v.mean().item(), float("nan")
    return v.mean().item(), (z * v.std(unbiased=True) / math.sqrt(v.numel())).item()


@dataclass
class EvalResult:
    """Mean score over a fixed set of test tasks with its 95% confidence interval."""

    metric: str
    mean: float
    ci95: float
    n_tasks: int
    steps: int | None
    settings: dict = field(default_factory=dict)
    scores: Tensor | None = field(default=None, repr=False)

    def __str__(self) -> str:
        scale, unit = (100.0, "%") if self.metric == "accuracy" else (1.0, "")
        extras = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        steps = "" if self.steps is None else f", {self.steps} test steps"
        return (f"{self.metric} {self.mean * scale:.2f}{unit} +/- {self.ci95 * scale:.2f}{unit} "
                f"(95% CI, {self.n_tasks} tasks{steps}; {extras})")

    def as_dict(self) -> dict:
        return {"metric": self.metric, "mean": self.mean, "ci95": self.ci95, "n_tasks": self.n_tasks,
                "steps": self.steps, **self.settings}


def paired_difference(a: EvalResult, b: EvalResult) -> tuple[float, float]:
    """Mean and 95% interval of ``a``'s score minus ``b``'s, task by task: both must be scored on the same tasks
    (the same sampler and ``n_tasks``). Pairing removes the tasks' own difficulty from the comparison, so the interval
    is far narrower than the two results' own intervals suggest."""
    if a.scores is None or b.scores is None or a.scores.shape != b.scores.shape:
        raise ValueError("paired_difference needs two results scored on the same tasks (same sampler and n_tasks)")
    return confidence_interval(a.scores.double() - b.scores.double())


def evaluate(learner: MetaLearner, sampler, *, n_tasks: int = 600, steps: int | None = None, batch_size: int = 32,
             progress: bool = False, execution: Execution = LOCAL, batchnorm: str = "transductive") -> EvalResult:
    """Score ``learner`` on tasks ``0`` to ``n_tasks - 1`` of ``sampler`` (a fixed, reproducible test set).

    ``steps`` is the number of adaptation steps at test time (the learner's own by default).
    ``batchnorm``: ``"transductive"`` (a task's queries pass through the network together) or ``"inductive"``
    (each query with the support set alone, :mod:`metalib.inner.inductive`); the result records it.
    ``execution`` splits the tasks over processes and gathers their scores before the interval is
    computed (:mod:`metalib.execution`; one process by default).
    """
    batch_size = _check_count("batch_size", batch_size)
    check_batchnorm(batchnorm)
    idx = list(execution.eval_tasks(_check_count("n_tasks", n_tasks)))
    learner.check_tasks(sampler)
    scores = []
    was_training = learner.training
    learner.eval()
    try:
        for start in tqdm(range(0, len(idx), batch_size), desc="evaluate", leave=False, disable=not show_progress(progress)):
            batch = sampler.batch(idx[start:start + batch_size])
            scores.append(learner.evaluate_batch(batch, steps=steps, batchnorm=batchnorm).detach())
    finally:
        learner.train(was_training)
    all_scores = torch.cat(scores) if scores else torch.empty(0)
    all_scores = execution.gather(all_scores)
    mean, ci = confidence_interval(all_scores)
    used_steps = steps if steps is not None else learner.test_steps
    return EvalResult(learner.problem.score_name, mean, ci, all_scores.numel(), used_steps,
                      {**learner.describe(), "batchnorm": batchnorm}, all_scores.cpu())


def adaptation_curve(learner: MetaLearner, batch: TaskBatch, steps: int | Sequence[int]) -> Tensor:
    """Query score of every task after each number of test-time steps: ``[B, len(steps)]`` (``steps`` an int
    means ``0, 1, ..., steps``), with the learner's own adaptation."""
    counts = range(steps + 1) if isinstance(steps, int) else steps
    return torch.stack([learner.evaluate_batch(batch, steps=int(s)).detach() for s in counts], 1).cpu()


def adapted_predictions(learner, batch: TaskBatch, x: Tensor, steps: Sequence[int] = (0, 1, 10)) -> dict[int, Tensor]:
    """Outputs ``{steps: [B, P, ...]}`` on inputs ``x`` (``[P, ...]`` shared or ``[B, P, ...]``) after adapting
    to each task of ``batch`` for each number of steps (``learner.adapted_params``), e.g. to draw sinusoid fits."""
    x = x.to(batch.support_x.device, batch.support_x.dtype)
    if x.dim() == batch.support_x.dim() - 1:
        x = x.expand(len(batch), *x.shape)
    out = {}
    for s in steps:
        params = learner.adapted_params(batch, steps=s)
        with torch.no_grad():
            out[int(s)] = forward_adapted(learner.model, params, x).cpu()
    return out

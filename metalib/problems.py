"""What a task asks for: one per-sample loss and one per-sample score, reduced per task here only.

Every inner-loop engine and every learner (MAML family, Reptile, ProtoNets, ...) gets its losses and
scores from a :class:`Problem`, so a user-defined problem behaves the same everywhere::

    L1 = Problem("l1", lambda out, y: (out - y).abs().flatten(1).mean(1),
                 lambda out, y: (out - y).abs().flatten(1).mean(1), "mae", higher_is_better=False)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Problem", "CLASSIFICATION", "REGRESSION", "GAUSSIAN", "get_problem"]

PerSample = Callable[[Tensor, Tensor], Tensor]  # (outputs [n, ...], targets [n, ...]) -> [n]


@dataclass(frozen=True)
class Problem:
    """A per-sample loss and score; :meth:`loss`/:meth:`score` reduce one task, ``task_*`` a meta-batch."""

    name: str
    sample_loss: PerSample
    sample_score: PerSample
    score_name: str
    higher_is_better: bool

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Mean loss of one task's samples: ``out`` ``[n, ...]`` -> scalar."""
        return self.sample_loss(out, y).mean()

    def score(self, out: Tensor, y: Tensor) -> Tensor:
        """Mean score of one task's samples (pass detached outputs)."""
        return self.sample_score(out, y).mean()

    def task_loss(self, out: Tensor, y: Tensor) -> Tensor:
        """Per-task mean loss of a meta-batch: ``out`` ``[B, n, ...]`` -> ``[B]``."""
        return _per_task(self.sample_loss, out, y)

    def task_score(self, out: Tensor, y: Tensor) -> Tensor:
        """Per-task mean score of a meta-batch: ``[B]``."""
        return _per_task(self.sample_score, out, y)


def _per_task(fn: PerSample, out: Tensor, y: Tensor) -> Tensor:
    B, n = out.shape[:2]
    return fn(out.flatten(0, 1), y.flatten(0, 1)).view(B, n).mean(1)


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def _correct(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.argmax(-1) == y).to(logits.dtype)


def _squared_error(out: Tensor, y: Tensor) -> Tensor:
    return (out - y).square().flatten(1).mean(1)


CLASSIFICATION = Problem("classification", _cross_entropy, _correct, "accuracy", higher_is_better=True)
REGRESSION = Problem("regression", _squared_error, _squared_error, "mse", higher_is_better=False)


def _gaussian_parts(out: Tensor) -> tuple[Tensor, Tensor]:
    """``out`` ``[n, 2 * d]``: means, then raw scales; sigma = 0.1 + 0.9 softplus(raw) (Garnelo et al., 2018)."""
    mean, raw = out.chunk(2, dim=-1)
    return mean, 0.1 + 0.9 * F.softplus(raw)


def _gaussian_nll(out: Tensor, y: Tensor) -> Tensor:
    mean, sigma = _gaussian_parts(out)
    return -torch.distributions.Normal(mean, sigma).log_prob(y).flatten(1).mean(1)


def _mean_squared_error(out: Tensor, y: Tensor) -> Tensor:
    return _squared_error(_gaussian_parts(out)[0], y)


#: Regression with a predictive Gaussian per output (a mean and a scale): trained by its negative log-likelihood,
#: scored by the squared error of the mean, so its score compares with REGRESSION's (used by the CNP).
GAUSSIAN = Problem("gaussian", _gaussian_nll, _mean_squared_error, "mse", higher_is_better=False)


def get_problem(problem: str | Problem) -> Problem:
    """A :class:`Problem`, or the name of a built-in one (``"classification"``, ``"regression"``)."""
    if isinstance(problem, Problem):
        return problem
    options = {"classification": CLASSIFICATION, "regression": REGRESSION, "gaussian": GAUSSIAN}
    if problem not in options:
        raise ValueError(f"problem must be a Problem or one of {list(options)}, got {problem!r}")
    return options[problem]

"""Where a meta-step runs: the small interface :func:`~metalib.train.meta_train` and
:func:`~metalib.evaluate.evaluate` use to spread work over processes.

:class:`Execution` is one process (the default). :class:`metalib.distributed.ShardedExecution` splits
every meta-batch and every evaluation over the ranks of a ``torchrun`` job and combines the results.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .tasks import TaskSampler
from .params import Params

__all__ = ["Execution", "LOCAL"]


class Execution:
    """One process: all the tasks of each step, nothing to combine."""

    is_main: bool = True  # this process writes checkpoints and shows progress
    processes: int = 1    # processes that share each step (stop decisions must then be collective)

    def train_tasks(self, step: int, meta_batch: int) -> Sequence[int]:
        """The tasks this process draws at training step ``step`` (the sampler owns the rule)."""
        return TaskSampler.step_indices(step, meta_batch)

    def eval_tasks(self, n_tasks: int) -> Sequence[int]:
        """This process's share of evaluation tasks ``0 .. n_tasks-1``."""
        return range(n_tasks)

    def reduce(self, grads: Params, metrics: dict[str, float]) -> tuple[Params, dict[str, float]]:
        """Combine meta-gradients and metrics of all processes (their mean)."""
        return grads, metrics

    def gather(self, scores: Tensor) -> Tensor:
        """All processes' per-task scores, in process order."""
        return scores

    def agree(self, flag: bool) -> bool:
        """True everywhere when true in any process (e.g. one ran out of its time budget)."""
        return flag


LOCAL = Execution()

"""Tasks for meta-learning: N-way K-shot classification and sinusoid regression.

Determinism: every task has an integer index, and task ``i`` of a sampler is a pure
function of ``(seed, i)``: it is drawn from its own ``torch.Generator`` seeded with
:func:`task_seed`. Training step ``t`` with meta-batch ``B`` uses tasks
``t*B .. t*B+B-1`` (:meth:`TaskSampler.step_indices`), so a run can be resumed at any step and
a meta-batch can be split across processes in any way without changing the tasks.

==============  ===================================================================
``batch``       ``TaskBatch``: a meta-batch of tasks (support and query sets)
``sampler``     ``TaskSampler``: indexed, deterministic task families; ``task_seed``
``episodes``    ``EpisodeSampler``: N-way K-shot classification episodes
``sinusoids``   ``SinusoidTasks``: the MAML sinusoid regression family
``batches``     ``ClassBatches``: minibatches over all classes of a split (supervised pre-training)
==============  ===================================================================
"""
from .batch import TaskBatch
from .batches import ClassBatches
from .episodes import EpisodeSampler
from .sampler import TaskSampler, check_count, task_generator, task_seed
from .sinusoids import SinusoidTasks

__all__ = ["ClassBatches", "EpisodeSampler", "SinusoidTasks", "TaskBatch", "TaskSampler", "check_count", "task_generator",
           "task_seed"]

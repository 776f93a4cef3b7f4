"""The inner loop: :mod:`~metalib.inner.core` is the algorithm (short, the lesson of notebook 04);
the engines decide how a meta-batch is executed, chosen by :mod:`~metalib.inner.select`.

==================  ==============================================================
``core``            ``InnerConfig``, ``sgd_step``, ``inner_sgd``, ``adapt``, ``task_losses``
``select``          the engine table by device and model kind; ``forward_adapted``
``batched``         all tasks in one pass of the model's ``forward_tasks``
``per_task``        ``loop`` and ``threads``: one task at a time, per-task meta-gradients
``workers``         the worker threads of ``threads``
``vmap``            ``torch.func.vmap`` over tasks, for any model
``adaptation``      adapting tasks: the one body every engine runs
``inductive``       inductive BatchNorm at evaluation: each query with the support set alone
==================  ==============================================================
"""
from .core import STRATEGIES, InnerConfig, inner_sgd, sgd_step
from .adaptation import forward
from .select import AUTO, Engine, adapt, forward_adapted, model_kind, resolve_strategy, select_engine, task_losses
from .inductive import BATCHNORM_MODES, check_batchnorm, forward_inductive, per_query, single_query_episodes

__all__ = ["InnerConfig", "STRATEGIES", "adapt", "task_losses", "inner_sgd", "sgd_step", "forward",
           "forward_adapted", "resolve_strategy", "select_engine", "model_kind", "AUTO", "Engine",
           "BATCHNORM_MODES", "check_batchnorm", "forward_inductive", "per_query", "single_query_episodes"]

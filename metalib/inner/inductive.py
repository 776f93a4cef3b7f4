"""Inductive BatchNorm at evaluation: every query is predicted without seeing the other queries.

``TaskBatchNorm`` normalises with the statistics of the batch it is given. Passing a task's whole query set
at once ("transductive", the MAML reference code's protocol) lets the queries inform each other's predictions
through those statistics. The inductive protocol (Nichol et al.'s non-transductive Reptile results) predicts
each query in a batch of the support set and that query alone, so a prediction depends only on the support set
and its own input. Both modes give the same numbers for models without batch statistics.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from ..tasks import TaskBatch
from ..params import Params
from .select import forward_adapted

__all__ = ["BATCHNORM_MODES", "check_batchnorm", "forward_inductive", "single_query_episodes", "per_query"]

BATCHNORM_MODES = ("transductive", "inductive")


def check_batchnorm(mode: str) -> str:
    """``mode`` if it is one of ``BATCHNORM_MODES``; else the error names them."""
    if mode not in BATCHNORM_MODES:
        raise ArgumentError(f"batchnorm must be one of {BATCHNORM_MODES}, got {mode!r}")
    return mode


def _chunk(device: torch.device, rows: int | None) -> int:
    """(task, query) pairs per pass: one on CPUs (small per-task convolutions measured ~3x faster than one grouped
    convolution over many pairs), 256 on accelerators."""
    if rows is not None:
        if rows < 1:
            raise ArgumentError(f"rows must be >= 1, got {rows}")
        return rows
    return 1 if device.type == "cpu" else 256


def _pairs(B: int, Q: int, start: int, stop: int, device: torch.device) -> tuple[Tensor, Tensor]:
    i = torch.arange(start, min(stop, B * Q), device=device)
    return i // Q, i % Q


def forward_inductive(model: nn.Module, params: Params, support_x: Tensor, query_x: Tensor,
                      rows: int | None = None) -> Tensor:
    """Outputs ``[B, Q, ...]`` on ``query_x`` ``[B, Q, ...]`` where each query passes through ``model`` in a batch of
    its task's support set and itself (``params`` per task ``[B, *shape]`` or shared, as for
    :func:`~metalib.inner.forward_adapted`). ``rows`` (task, query) pairs run at once (default by device)."""
    B, Q = query_x.shape[:2]
    own = dict(model.named_parameters())
    per_task = {k for k, v in params.items() if v.dim() == own[k].dim() + 1}
    chunk, outs = _chunk(query_x.device, rows), []
    for start in range(0, B * Q, chunk):
        t, q = _pairs(B, Q, start, start + chunk, query_x.device)
        x = torch.cat([support_x[t], query_x[t, q].unsqueeze(1)], 1)  # [E, S + 1, ...]
        p = {k: v[t] if k in per_task else v for k, v in params.items()}
        outs.append(forward_adapted(model, p, x)[:, -1])  # the query's row of each [support; query] batch
    out = torch.cat(outs)
    return out.view(B, Q, *out.shape[1:])


def single_query_episodes(batch: TaskBatch, pairs: tuple[Tensor, Tensor] | None = None) -> TaskBatch:
    """Every query of every task as an episode of its own, task-major (task ``b``'s queries are episodes
    ``b*Q`` to ``b*Q+Q-1``): the task's support set and one query. ``pairs`` (task and query indices) picks some."""
    B, Q = batch.query_y.shape[:2]
    t, q = pairs if pairs is not None else _pairs(B, Q, 0, B * Q, batch.query_y.device)
    return TaskBatch(batch.support_x[t], batch.support_y[t], batch.query_x[t, q].unsqueeze(1),
                     batch.query_y[t, q].unsqueeze(1), {k: v[t] for k, v in batch.info.items()})


def per_query(outputs: Callable[[TaskBatch], Tensor], batch: TaskBatch, rows: int | None = None) -> Tensor:
    """``outputs(episodes)`` (``[E, 1, ...]``) of every single-query episode of ``batch``, as ``[B, Q, ...]``: an
    episode learner's query outputs, each query seeing only the support set. ``rows`` episodes run at once."""
    B, Q = batch.query_y.shape[:2]
    chunk, parts = _chunk(batch.query_y.device, rows), []
    for start in range(0, B * Q, chunk):
        parts.append(outputs(single_query_episodes(batch, _pairs(B, Q, start, start + chunk, batch.query_y.device)))[:, 0])
    out = torch.cat(parts)
    return out.view(B, Q, *out.shape[1:])

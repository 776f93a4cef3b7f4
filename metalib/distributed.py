"""Distributed meta-training with ``torch.distributed``, launched by ``torchrun``.

The global meta-batch of step ``t`` is what :meth:`metalib.tasks.TaskSampler.step_indices` names.
With ``W`` processes (ranks), rank ``r`` draws its contiguous share of ``B // W`` of them, computes
the meta-gradient of its share, and one all-reduce of a single flattened buffer averages the
meta-gradients (and the metrics) over the ranks. Every learner's meta-gradient is a mean over equally
sized groups of tasks, so the average equals the single-process meta-gradient of the whole batch
(up to floating-point rounding) and every rank applies the same update: ``W`` ranks with meta-batch
``B`` train like one process with meta-batch ``B``. Evaluation tasks are split across ranks too and
the per-task scores are gathered before the 95% interval is computed.

Typical script (``python -m metalib.train_cli`` is one)::

    from torch.distributed.elastic.multiprocessing.errors import record

    @record  # torchrun then reports the failing rank's traceback
    def main():
        ctx = init_distributed()            # single process when not launched by torchrun
        try:
            splits = prepare_once(lambda: omniglot_splits("vinyals"), ctx)
            ...
            history = distributed_meta_train(learner, sampler, steps=1000, meta_batch=32, ctx=ctx)
            print(distributed_evaluate(learner, test_sampler, n_tasks=600, ctx=ctx))
        finally:
            shutdown_distributed()

A rank that raises brings the job down: ``torchrun`` stops the other ranks of its machine, and ranks on
other machines fail in their next collective after the process-group ``timeout``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, TypeVar

import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor

from .algorithms import MetaLearner
from .evaluate import EvalResult, evaluate
from .execution import Execution
from .tasks import TaskSampler
from .train import meta_train
from .params import Params
from .utils import resolve_device

__all__ = ["DistContext", "init_distributed", "shutdown_distributed", "current_context", "prepare_once",
           "ShardedExecution", "broadcast_parameters", "distributed_meta_train", "distributed_evaluate",
           "DEFAULT_TIMEOUT_S"]

T = TypeVar("T")

#: Default process-group timeout: how long a collective waits for a missing rank before failing.
#: It must exceed the slowest single-rank phase (e.g. rank 0 building the Omniglot cache).
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job.

    ``device`` is where the learner should live (``cuda:LOCAL_RANK`` on GPUs); ``backend`` is
    ``None`` for a single process without a process group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.backend is not None and self.world_size > 1

    @property
    def comm_device(self) -> torch.device:
        """Device of the tensors handed to collectives: NCCL needs CUDA tensors, gloo takes CPU ones."""
        return self.device if self.backend == "nccl" else torch.device("cpu")


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(f"WORLD_SIZE is set but {name} is not: launch with torchrun, which sets RANK, "
                           f"LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT")
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from None


def _as_timedelta(timeout: float | timedelta) -> timedelta:
    td = timeout if isinstance(timeout, timedelta) else timedelta(seconds=float(timeout))
    if td.total_seconds() <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    return td


def init_distributed(backend: str | None = None, *, timeout: float | timedelta = DEFAULT_TIMEOUT_S,
                     device: str | torch.device = "auto") -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, or run alone.

    * Not launched by torchrun (``WORLD_SIZE`` unset): no process group, one process, rank 0.
    * ``backend=None``: NCCL when the device is a GPU, gloo on CPU. On GPUs each process uses
      ``cuda:LOCAL_RANK`` and makes it the current CUDA device.
    * ``timeout`` (seconds or a ``timedelta``): a collective that waits longer for another rank fails
      with an error instead of hanging, so a dead or stuck rank brings the job down.
    * ``device``: ``"auto"`` (GPU when visible, else CPU), ``"cpu"`` or ``"cuda"``.

    Calling it again in the same process returns the context of the existing group.
    """
    td = _as_timedelta(timeout)
    if backend not in (None, "gloo", "nccl"):
        raise ValueError(f"backend must be None (automatic), 'gloo' or 'nccl', got {backend!r}")
    if "WORLD_SIZE" not in os.environ:
        return DistContext(device=resolve_device(device))
    world, rank, local_rank = _env_int("WORLD_SIZE"), _env_int("RANK"), _env_int("LOCAL_RANK")
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={world})")

    dev = resolve_device(device)
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are "
                               f"visible: use --nproc-per-node <= the number of GPUs on each machine")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("the NCCL backend needs CUDA devices; use backend='gloo' (or None) on CPU")
    if backend == "gloo" and not dist.is_gloo_available():
        raise RuntimeError("this torch build has no gloo backend")

    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=td, rank=rank, world_size=world)
    elif dist.get_backend() != backend:
        raise RuntimeError(f"a {dist.get_backend()} process group is already initialised; asked for {backend}")
    return DistContext(rank, world, local_rank, dev, backend)


def shutdown_distributed(synchronize: bool = False) -> None:
    """Destroy the process group, if any (safe to call in a ``finally``). ``synchronize``: first wait until every
    rank is here (the end of a run that went well): a rank that exits while another still tears down its gloo
    connections can abort the other at exit ("terminate called without an active exception", seen once in CI)."""
    if dist.is_available() and dist.is_initialized():
        if synchronize and dist.get_world_size() > 1:
            try:
                _barrier(current_context())
            except Exception:  # a peer already gone: destroy anyway, the job's error is reported elsewhere
                pass
        dist.destroy_process_group()


def current_context() -> DistContext:
    """The context of the initialised process group, else a single CPU process."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    backend = str(dist.get_backend())
    if backend == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, backend)


def _barrier(ctx: DistContext) -> None:
    if ctx.backend == "nccl":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def prepare_once(fn: Callable[[], T], ctx: DistContext | None = None, *, per_node: bool = False) -> T:
    """Run ``fn`` on rank 0 first (it builds caches, downloads), then on the other ranks.

    The other ranks wait at a barrier and then call ``fn`` themselves, which now only loads what rank 0
    built. With ``per_node=True`` the first rank of every machine goes first (machines without a
    shared filesystem). If the first rank fails, the job stops (torchrun on the same machine, the
    process-group timeout elsewhere).
    """
    ctx = ctx or current_context()
    if not ctx.is_distributed:
        return fn()
    first = ctx.local_rank == 0 if per_node else ctx.is_main
    result = fn() if first else None
    _barrier(ctx)
    return result if first else fn()  # type: ignore[return-value]


def _share(n: int, rank: int, world: int) -> range:
    """Rank's contiguous share of ``range(n)``: the first ``n % world`` ranks take one extra item."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


class ShardedExecution(Execution):
    """The :class:`~metalib.execution.Execution` of one rank of a ``torchrun`` job.

    Rank ``r`` of ``W`` draws the ``B // W`` consecutive tasks starting at ``r*B//W`` within the step's
    global meta-batch; evaluation tasks ``range(n)`` are split the same way (unequal shares allowed, in
    rank order). Meta-gradients and metrics are averaged with one SUM all-reduce of a flattened buffer
    per step (one per dtype if the meta-parameters mix dtypes); ``gather`` collects per-task scores of
    unequal lengths in rank order; ``agree`` makes a stop decision collective.
    """

    def __init__(self, ctx: DistContext, meta_batch: int | None = None):
        world, rank = ctx.world_size, ctx.rank
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world}")
        if meta_batch is not None:
            if meta_batch < 1:
                raise ValueError(f"meta_batch must be a positive integer, got {meta_batch}")
            if meta_batch % world:
                lo = meta_batch // world * world
                hint = f"{lo} or {lo + world}" if lo else f"{world}"
                raise ValueError(
                    f"meta-batch {meta_batch} is not divisible by the {world} ranks: every rank must draw the "
                    f"same number of tasks so that the averaged meta-gradient equals the single-process one. "
                    f"Use a multiple of {world} (e.g. {hint}) or a different number of processes.")
        self.ctx = ctx

    @property
    def is_main(self) -> bool:  # type: ignore[override]
        return self.ctx.is_main

    @property
    def processes(self) -> int:  # type: ignore[override]
        return self.ctx.world_size

    def train_tasks(self, step: int, meta_batch: int) -> list[int]:
        if meta_batch % self.ctx.world_size:
            ShardedExecution(self.ctx, meta_batch)  # raises the divisibility error
        per_rank = meta_batch // self.ctx.world_size
        tasks = TaskSampler.step_indices(step, meta_batch)
        return list(tasks[self.ctx.rank * per_rank:(self.ctx.rank + 1) * per_rank])

    def eval_tasks(self, n_tasks: int) -> list[int]:
        return list(_share(n_tasks, self.ctx.rank, self.ctx.world_size))

    def __repr__(self) -> str:
        return f"ShardedExecution(rank={self.ctx.rank}, world_size={self.ctx.world_size})"

    def reduce(self, grads: Params, metrics: dict[str, float]) -> tuple[Params, dict[str, float]]:
        if not self.ctx.is_distributed:
            return grads, metrics
        keys, mkeys = sorted(grads), sorted(metrics)
        comm = self.ctx.comm_device
        by_dtype: dict[torch.dtype, list[str]] = {}
        for k in keys:
            by_dtype.setdefault(grads[k].dtype, []).append(k)
        # metrics ride along in the widest floating buffer, so the usual case is a single all-reduce
        metric_dtype = max(by_dtype, key=lambda d: torch.finfo(d).bits) if by_dtype else torch.float64
        by_dtype.setdefault(metric_dtype, [])
        out: Params = {}
        averaged: dict[str, float] = {}
        for dtype, names in by_dtype.items():
            parts = [grads[k].detach().reshape(-1).to(comm) for k in names]
            if dtype == metric_dtype:
                parts.append(torch.tensor([metrics[k] for k in mkeys], dtype=dtype, device=comm))
            buf = torch.cat(parts)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= self.ctx.world_size
            offset = 0
            for k in names:
                g = grads[k]
                out[k] = buf[offset:offset + g.numel()].view_as(g).to(g.device)
                offset += g.numel()
            if dtype == metric_dtype:
                averaged = dict(zip(mkeys, buf[offset:].tolist()))
        return {k: out[k] for k in grads}, {k: averaged[k] for k in metrics}

    def gather(self, scores: Tensor) -> Tensor:
        """All ranks' per-task scores (any lengths, possibly zero), concatenated in rank order."""
        if not self.ctx.is_distributed:
            return scores
        comm, world = self.ctx.comm_device, self.ctx.world_size
        local = scores.detach().reshape(-1).to(comm, torch.float64)
        count = torch.tensor([local.numel()], dtype=torch.long, device=comm)
        counts = [torch.zeros_like(count) for _ in range(world)]
        dist.all_gather(counts, count)
        sizes = [int(c.item()) for c in counts]
        padded = torch.zeros(max(sizes), dtype=torch.float64, device=comm)
        padded[:local.numel()] = local
        chunks = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(chunks, padded)
        dtype = scores.dtype if scores.is_floating_point() else torch.float64
        return torch.cat([c[:n] for c, n in zip(chunks, sizes)]).to(scores.device, dtype)

    def agree(self, flag: bool) -> bool:
        """True on every rank when it is true on any rank (e.g. a rank ran out of its time budget)."""
        if not self.ctx.is_distributed:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32, device=self.ctx.comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def broadcast_parameters(module: torch.nn.Module, ctx: DistContext | None = None) -> None:
    """Copy rank 0's parameters and buffers to every rank (one flattened broadcast per dtype)."""
    ctx = ctx or current_context()
    if not ctx.is_distributed:
        return
    tensors = list(module.state_dict().values())
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    with torch.no_grad():
        for group in by_dtype.values():
            buf = torch.cat([t.reshape(-1).to(ctx.comm_device) for t in group])
            dist.broadcast(buf, src=0)
            offset = 0
            for t in group:
                t.copy_(buf[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def _check_same_checkpoint(checkpoint: str | os.PathLike | None, resume: bool, ctx: DistContext) -> None:
    """All ranks must see the same checkpoint file, else they would resume from different steps."""
    if checkpoint is None or not resume:
        return
    seen = [None] * ctx.world_size
    dist.all_gather_object(seen, Path(checkpoint).exists())
    if len(set(seen)) > 1:
        missing = [r for r, s in enumerate(seen) if not s]
        raise RuntimeError(
            f"checkpoint {checkpoint} exists on some ranks but not on ranks {missing}: resuming needs the "
            f"checkpoint on a filesystem shared by all machines (or copy it to each), or pass resume=False")


def distributed_meta_train(learner: MetaLearner, sampler, *, steps: int, meta_batch: int = 32,
                           ctx: DistContext | None = None, sync_parameters: bool = True,
                           **kwargs) -> pd.DataFrame:
    """:func:`metalib.train.meta_train` across all ranks of the process group.

    Same arguments and result as ``meta_train`` (``meta_batch`` is the *global* meta-batch, a multiple
    of the world size); rank 0 alone writes the checkpoint and shows progress. With
    ``sync_parameters`` rank 0's initial meta-parameters are broadcast first, so unseeded models agree.
    Without a process group this is exactly ``meta_train``. Resuming works with any number of ranks.
    """
    ctx = ctx or current_context()
    if "execution" in kwargs:
        raise TypeError("distributed_meta_train sets execution itself; call meta_train to pass one")
    if not ctx.is_distributed:
        return meta_train(learner, sampler, steps=steps, meta_batch=meta_batch, **kwargs)
    execution = ShardedExecution(ctx, meta_batch)
    _check_same_checkpoint(kwargs.get("checkpoint"), kwargs.get("resume", True), ctx)
    if sync_parameters:
        broadcast_parameters(learner, ctx)
    return meta_train(learner, sampler, steps=steps, meta_batch=meta_batch, execution=execution, **kwargs)


def distributed_evaluate(learner: MetaLearner, sampler, *, n_tasks: int = 600, ctx: DistContext | None = None,
                         **kwargs) -> EvalResult:
    """:func:`metalib.evaluate.evaluate` with tasks ``0..n_tasks-1`` split across ranks.

    Every rank returns the same result: the mean and 95% interval over all ``n_tasks`` scores
    (``n_tasks`` need not be a multiple of the world size).
    """
    ctx = ctx or current_context()
    if not ctx.is_distributed:
        return evaluate(learner, sampler, n_tasks=n_tasks, **kwargs)
    if "execution" in kwargs:
        raise TypeError("distributed_evaluate splits the tasks itself; call evaluate to pass an execution")
    kwargs["progress"] = kwargs.get("progress", False) and ctx.is_main
    return evaluate(learner, sampler, n_tasks=n_tasks, execution=ShardedExecution(ctx), **kwargs)

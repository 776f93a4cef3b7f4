"""Persistent worker threads for the ``threads`` engine: each runs one intra-op thread, and the
parallelism is across tasks (on a CPU this beats splitting each small convolution over the cores)."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch

__all__ = ["pool", "chunks", "map_chunks"]

_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
_FORKED = False  # this process is a fork of one that imported this module


def _forget_pools_after_fork() -> None:
    """A forked child inherits the pools but not their threads (and maybe a held lock): start afresh."""
    global _POOLS_LOCK, _FORKED
    _POOLS.clear()
    _POOLS_LOCK = threading.Lock()
    _FORKED = True


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _one_intra_op_thread() -> None:
    torch.get_num_threads()  # first call in a thread: torch initialises the thread's count (from the global)
    torch.set_num_threads(1)  # ... so that this setting sticks to the thread


def pool(workers: int) -> ThreadPoolExecutor:
    """A persistent pool whose threads each run one intra-op thread."""
    with _POOLS_LOCK:
        if workers not in _POOLS:
            caller_threads = torch.get_num_threads()
            executor = ThreadPoolExecutor(workers, thread_name_prefix="metalib-tasks", initializer=_one_intra_op_thread)
            started = threading.Barrier(workers)
            list(executor.map(lambda _: started.wait(timeout=60), range(workers)))  # start every worker now
            # torch.set_num_threads also sets the default for threads started later: give that back
            torch.set_num_threads(caller_threads)
            _POOLS[workers] = executor
        return _POOLS[workers]


def chunks(n_tasks: int, parallel: bool) -> list[slice]:
    """Contiguous slices of the meta-batch: one per worker (as many as torch has threads) when
    ``parallel``, else the whole meta-batch as one chunk for the caller's thread."""
    workers = max(1, min(torch.get_num_threads(), n_tasks)) if parallel else 1
    bounds = [round(i * n_tasks / workers) for i in range(workers + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def map_chunks(fn: Callable[[slice], object], parts: Sequence[slice]) -> list:
    """``[fn(chunk) for chunk in parts]``: inline for one chunk, else on the worker threads in the
    caller's grad mode. In a forked child the chunks run one after another on a single fresh worker:
    concurrent chunks there crashed now and then inside MKL (a segfault in two workers' matrix products
    in a CI run), and the child's own thread cannot run them either, since its OpenMP pool is the
    parent's, whose threads do not exist (a parallel region there hangs). Each chunk still computes
    with one intra-op thread, so the results are those of the parallel path."""
    if len(parts) == 1:
        return [fn(parts[0])]
    grad_mode = torch.is_grad_enabled()

    def work(chunk: slice):
        with torch.set_grad_enabled(grad_mode):
            return fn(chunk)
    return list(pool(1 if _FORKED else len(parts)).map(work, parts))

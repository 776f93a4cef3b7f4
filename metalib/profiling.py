"""What one computation costs: wall-clock time, the memory autograd's graph holds, and CUDA peak memory."""
from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .utils import resolve_device

__all__ = ["Cost", "measure", "interleaved_times", "cpu_name", "History"]


@dataclass
class Cost:
    """``seconds``; ``graph_mib``: peak MiB of tensors saved by autograd graphs (nan under torch.func
    transforms, which do not support saved-tensor hooks); ``cuda_peak_mib``: peak CUDA allocation (nan off GPU)."""

    seconds: float
    graph_mib: float
    cuda_peak_mib: float


class _SavedTensors:
    """Counts the storages autograd saves for backward while they are alive, and their peak."""

    def __init__(self):
        self.live: dict[tuple, int] = {}
        self.now = self.peak = 0

    def pack(self, t: torch.Tensor) -> "_Held":
        return _Held(self, t)


class _Held:  # what autograd keeps instead of the tensor; counted while alive
    def __init__(self, owner: _SavedTensors, t: torch.Tensor):
        self.owner, self.t, self.key = owner, t, (t.device, t.untyped_storage().data_ptr())
        if owner.live.get(self.key, 0) == 0:
            owner.now += t.untyped_storage().nbytes()
            owner.peak = max(owner.peak, owner.now)
        owner.live[self.key] = owner.live.get(self.key, 0) + 1

    def __del__(self):
        owner = self.owner
        owner.live[self.key] -= 1
        if owner.live[self.key] == 0:
            owner.now -= self.t.untyped_storage().nbytes()


def measure(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, Cost]:
    """Run ``fn()`` once; return its result and its :class:`Cost`. Works on every device: the graph memory
    is counted with ``torch.autograd.graph.saved_tensors_hooks`` (thread-local: work on other threads,
    e.g. the ``threads`` engine's workers, is not seen), the CUDA peak with ``torch.cuda`` statistics. Under
    ``torch.func`` transforms, which refuse saved-tensor hooks, ``fn`` runs a second time; that run is timed."""
    device = resolve_device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    saved = _SavedTensors()
    start = time.perf_counter()
    try:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda held: held.t):
            result = fn()
        graph_mib = saved.peak / 2**20
    except RuntimeError as exc:  # torch.func transforms do not support saved-tensor hooks: run again, unhooked
        if "hook" not in str(exc):
            raise
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result, graph_mib = fn(), math.nan
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    cuda_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if cuda else math.nan
    return result, Cost(seconds, graph_mib, cuda_mib)


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux): what timings and manifests say they ran on."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class History:
    """Rows of a run's history, each stamped with ``time_s``: seconds since the run started, not counting the
    time spent in callbacks that add columns (e.g. evaluations for a plot)."""

    def __init__(self):
        self.rows: list[dict] = []
        self._start, self._excluded = time.perf_counter(), 0.0

    def add(self, row: dict, callback: Callable[..., dict] | None = None, *args: Any) -> dict:
        """Stamp ``row`` and append it; ``callback(*args)`` may add columns, untimed."""
        row["time_s"] = time.perf_counter() - self._start - self._excluded
        if callback is not None:
            clock = time.perf_counter()
            row.update(callback(*args))
            self._excluded += time.perf_counter() - clock
        self.rows.append(row)
        return row

    def frame(self):  # -> pandas.DataFrame (imported on use)
        import pandas as pd

        return pd.DataFrame(self.rows)


def interleaved_times(fns: dict, repeats: int, device: torch.device | str = "cpu") -> dict:
    """Seconds per call of each of ``fns`` (name -> zero-argument function), timed in ``repeats`` interleaved rounds
    (each round calls every function once, in turn), so a slow spell of a shared machine hits all alike; returns
    ``{name: [seconds per round]}``. CUDA work is synchronised before and after each call."""
    device = resolve_device(device)
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times

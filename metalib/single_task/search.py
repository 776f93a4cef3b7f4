"""Tuning by trial and error (Bergstra and Bengio, 2012): grid and random search, the AutoML baseline that
learning hyperparameters by gradient (:mod:`metalib.single_task.hyper`) is compared with. Each trial is a full run."""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

__all__ = ["SearchResult", "grid_search", "random_search"]


@dataclass
class SearchResult:
    """Outcome of a search: the best configuration, its value, and every trial (one row each)."""

    best: dict[str, Any]
    best_value: float
    trials: pd.DataFrame
    time_s: float

    @property
    def n_trials(self) -> int:
        return len(self.trials)


def _run_trials(objective: Callable[..., float], configs: Sequence[dict[str, Any]]) -> SearchResult:
    rows, start = [], time.perf_counter()
    for i, cfg in enumerate(configs):
        value = float(objective(**cfg))
        rows.append({"trial": i, **cfg, "value": value if math.isfinite(value) else math.inf})
    trials = pd.DataFrame(rows)
    if trials.empty:
        raise ValueError("a search needs at least one trial")
    best = trials.loc[trials["value"].idxmin()]
    config = {k: best[k].item() if hasattr(best[k], "item") else best[k] for k in configs[0]}  # plain Python values
    return SearchResult(config, float(best["value"]), trials, time.perf_counter() - start)


def grid_search(objective: Callable[..., float], grid: Mapping[str, Sequence[Any]]) -> SearchResult:
    """Evaluate ``objective(**config)`` (lower is better) on the Cartesian product of ``grid``'s values.

    Non-finite values (a diverged run) count as ``+inf``. ``grid_search(f, {"lr": [0.01, 0.1], "wd": [0, 1e-3]})``
    makes 4 trials.
    """
    keys = list(grid)
    configs = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
    return _run_trials(objective, configs)


def random_search(objective: Callable[..., float], space: Mapping[str, Any], n_trials: int,
                  *, seed: int = 0) -> SearchResult:
    """Evaluate ``objective(**config)`` (lower is better) on ``n_trials`` configurations drawn from ``space``.

    Each entry of ``space`` is ``(low, high)`` (uniform), ``(low, high, "log")`` (log-uniform, for rates) or
    a list of choices. Draws come from a generator seeded with ``seed``.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    g = torch.Generator().manual_seed(seed)

    def draw(spec: Any) -> Any:
        if isinstance(spec, list):
            return spec[int(torch.randint(len(spec), (), generator=g))]
        lo, hi, *scale = spec
        u = torch.rand((), generator=g, dtype=torch.float64).item()
        if scale and scale[0] == "log":
            return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        return lo + u * (hi - lo)

    return _run_trials(objective, [{k: draw(s) for k, s in space.items()} for _ in range(n_trials)])

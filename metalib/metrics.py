"""Record metrics from inside a notebook; the notebook runner (:mod:`metalib.runner`) collects them.

A notebook reports its results with :func:`record_metric`::

    from metalib.metrics import record_metric
    record_metric("test_accuracy", result)                  # an EvalResult: its mean, with ci95 and n_tasks
    record_metric("final_loss", history["loss"].iloc[-1], tolerance=0.02)
    record_metric("n_params", sum(p.numel() for p in model.parameters()))

Under the runner, ``METALIB_METRICS_PATH`` points each kernel to ``<output dir>/<stem>.metrics.json`` next
to the executed notebook, and the metrics are appended there (insertion order; recording a name again
replaces it). Without that variable (interactive use) they are kept in memory (:func:`recorded`). Nothing is
printed either way, so a reader sees the notebook's results, not its bookkeeping.

The ``tolerance`` (and a recorded ``ci95``) become the baseline's tolerance; see :mod:`metalib.runner.baselines`.
This module imports only the standard library (and :mod:`metalib.outputs`, which does too).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from .outputs import write_atomic

__all__ = ["record_metric", "record_metrics", "recorded", "load_metrics", "format_value", "write_json", "METRICS_ENV"]

METRICS_ENV = "METALIB_METRICS_PATH"


def _plain(value: Any, what: str) -> Any:
    """``value`` as a JSON scalar; NumPy/torch scalars are unwrapped with ``.item()``."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, RuntimeError) as exc:  # a tensor/array with more than one element
            raise TypeError(f"{what} must be a scalar, got {type(value).__name__} with several elements") from exc
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{what} must be a float, int or str, got {type(value).__name__}")


def _metric_entry(name: str, value: Any, tolerance: float | None, info: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"metric name must be a non-empty string, got {name!r}")
    info = dict(info)
    if hasattr(value, "mean") and hasattr(value, "ci95") and not hasattr(value, "item"):
        # An EvalResult: record its mean and keep the noise needed for the tolerance.
        info.setdefault("ci95", value.ci95)
        if getattr(value, "n_tasks", None) is not None:
            info.setdefault("n_tasks", value.n_tasks)
        value = value.mean
    value = _plain(value, f"metric {name!r}")
    if value is None:
        raise TypeError(f"metric {name!r} must be a float, int or str, got None")
    entry: dict[str, Any] = {"value": value}
    if tolerance is not None:
        tol = _plain(tolerance, f"tolerance of metric {name!r}")
        if isinstance(tol, (str, bool)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"tolerance of metric {name!r} must be a finite number >= 0, got {tolerance!r}")
        entry["tolerance"] = float(tol)
    for key, extra in info.items():
        entry[key] = _plain(extra, f"info {key!r} of metric {name!r}")
    return entry


def format_value(value: Any) -> str:
    """A metric value as summaries print it (floats to 6 significant digits)."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a crash or a full disk never leaves half a file)."""
    write_atomic(path, json.dumps(data, indent=2) + "\n", "metrics file")


def load_metrics(path: str | Path) -> dict[str, dict[str, Any]]:
    """Metrics recorded in ``path`` as ``{name: {"value": ..., "tolerance"?: ..., **info}}``; {} if absent."""
    path = Path(path)
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics")
    return data


def record_metrics(metrics: Mapping[str, Any], *, tolerance: float | None = None) -> None:
    """Record several metrics at once (same ``tolerance`` for all); see :func:`record_metric`."""
    entries = {name: _metric_entry(name, value, tolerance, {}) for name, value in metrics.items()}
    _store(entries)


def record_metric(name: str, value: Any, *, tolerance: float | None = None, **info: Any) -> None:
    """Record one metric of this notebook run.

    ``value`` is a float, int or str (NumPy/torch scalars are unwrapped), or an ``EvalResult`` (its mean is
    recorded, with ``ci95`` and ``n_tasks``). ``tolerance`` is the absolute deviation the regression test
    allows; ``info`` holds further JSON scalars (``ci95=`` is used for the default tolerance). Under the
    runner the metric is written to ``$METALIB_METRICS_PATH``; interactively it is kept for :func:`recorded`.
    Nothing is printed.
    """
    _store({name: _metric_entry(name, value, tolerance, info)})


_RECORDED: dict[str, dict[str, Any]] = {}


def _store(entries: dict[str, dict[str, Any]]) -> None:
    target = os.environ.get(METRICS_ENV)
    if target:
        path = Path(target)
        metrics = load_metrics(path)
        metrics.update(entries)
        write_json(path, metrics)
    _RECORDED.update(entries)  # silent: a reader sees the notebook's results, not its bookkeeping


def recorded() -> dict[str, dict[str, Any]]:
    """The metrics recorded in this process so far (``{name: entry}``), e.g. to look at them in a notebook."""
    return dict(_RECORDED)

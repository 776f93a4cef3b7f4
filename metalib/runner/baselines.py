"""Metric baselines: the recorded metrics of a quick run, with tolerances, and the comparison with them.

``tests/test_notebooks.py`` runs every notebook in the quick profile and compares its metrics with
``tests/baselines/<stem>.json``::

    {"notebook": "02_maml.ipynb", "profile": "quick",
     "metrics": {"test_accuracy": {"value": 0.93, "tolerance": 0.024, "basis": "3 x ci95"}}}

Tolerances are absolute. ``run --update-baselines`` (``make baselines``) rewrites the baselines of the
notebooks it ran, choosing each tolerance as: the ``tolerance`` passed to
:func:`metalib.metrics.record_metric`; else 3 x its ``ci95`` (the half-width of the 95% confidence
interval, the noise of an accuracy); else 5% of the value. Strings and booleans must match exactly.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..metrics import format_value, write_json

if TYPE_CHECKING:
    from .notebooks import NotebookResult

__all__ = ["baseline_path", "default_tolerance", "make_baseline", "write_baseline", "load_baseline",
           "MetricComparison", "compare_metrics"]

DEFAULT_REL_TOLERANCE = 0.05
CI_TOLERANCE_FACTOR = 3.0
_MIN_TOLERANCE = 1e-9


def baseline_path(notebook: str | Path, baselines_dir: str | Path) -> Path:
    """``<baselines_dir>/<stem>.json`` for a notebook path or stem."""
    return Path(baselines_dir) / f"{Path(notebook).stem}.json"


def default_tolerance(entry: Mapping[str, Any]) -> tuple[float | None, str]:
    """Absolute tolerance for a recorded metric, and how it was chosen (None: exact match)."""
    value = entry["value"]
    if isinstance(value, (str, bool)):
        return None, "exact"
    if entry.get("tolerance") is not None:
        return float(entry["tolerance"]), "recorded by the notebook"
    ci95 = entry.get("ci95")
    if isinstance(ci95, (int, float)) and not isinstance(ci95, bool) and math.isfinite(ci95) and ci95 > 0:
        return CI_TOLERANCE_FACTOR * float(ci95), f"{CI_TOLERANCE_FACTOR:g} x ci95"
    tol = DEFAULT_REL_TOLERANCE * abs(value) if math.isfinite(value) else 0.0
    return max(tol, _MIN_TOLERANCE), f"{DEFAULT_REL_TOLERANCE:.0%} relative"


def make_baseline(notebook: str, metrics: Mapping[str, Mapping[str, Any]], profile: str = "quick") -> dict:
    """The baseline document for a run's metrics."""
    entries = {}
    for name, entry in metrics.items():
        tol, basis = default_tolerance(entry)
        entries[name] = {"value": entry["value"], "tolerance": tol, "basis": basis}
    return {"notebook": notebook, "profile": profile,
            "note": "absolute tolerances; regenerate with `make baselines`", "metrics": entries}


def write_baseline(result: NotebookResult, baselines_dir: str | Path, profile: str = "quick") -> Path:
    """Write the baseline of a successful run; returns its path."""
    if not result.ok:
        raise ValueError(f"{result.notebook} did not run successfully ({result.status}); no baseline written")
    path = baseline_path(result.notebook, baselines_dir)
    write_json(path, make_baseline(result.path.name, result.metrics, profile))
    return path


def load_baseline(path: str | Path) -> dict:
    """A baseline document, checked for the ``metrics`` mapping."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{path}: not a baseline (expected an object with a 'metrics' mapping)")
    return data


@dataclass
class MetricComparison:
    """Failures (out of tolerance or missing), metrics new to the baseline, and those that passed."""

    failures: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def compare_metrics(metrics: Mapping[str, Mapping[str, Any]], baseline: Mapping[str, Any]) -> MetricComparison:
    """Compare a run's metrics with a baseline document (absolute tolerances; None means exact)."""
    out = MetricComparison()
    expected: Mapping[str, Mapping[str, Any]] = baseline["metrics"]
    for name, spec in expected.items():
        want, tol = spec["value"], spec.get("tolerance")
        if name not in metrics:
            out.failures.append(f"{name}: missing from the run (baseline {format_value(want)})")
            continue
        got = metrics[name]["value"]
        if tol is not None and _is_number(got) and _is_number(want):
            good = math.isfinite(got) and abs(got - want) <= tol * (1 + 1e-9) + 1e-12
            detail = f"{format_value(got)} vs baseline {format_value(want)} +/- {format_value(tol)}"
        else:
            good = type(got) is type(want) and got == want
            detail = f"{got!r} vs baseline {want!r} (exact)"
        (out.passed if good else out.failures).append(f"{name}: {detail}")
    out.new = [name for name in metrics if name not in expected]
    return out

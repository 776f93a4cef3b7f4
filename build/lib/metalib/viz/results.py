"""Results: a table of means with 95% intervals (and published numbers), and the same as bars.

A result is an ``EvalResult`` (from :func:`metalib.evaluate.evaluate`), a ``(mean, ci95)`` pair or a number;
``results`` are ``{series: result}`` or ``{group: {series: result}}``.
"""
from __future__ import annotations

from typing import Any, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .common import column_label

__all__ = ["results_table", "result_bars"]

LEGEND_WIDTH = 2.0  # inches added to a new figure for the legend right of the axes


def _mean_and_ci(r: Any) -> tuple[float, float]:
    if hasattr(r, "mean") and hasattr(r, "ci95") and not isinstance(r, np.ndarray):
        return float(r.mean), float(r.ci95)
    if isinstance(r, (tuple, list)) and len(r) == 2:
        return float(r[0]), float(r[1])
    return float(r), float("nan")


def _nested(results: Mapping) -> dict[str, dict[str, Any]]:
    """``{series: result}`` -> ``{"": {series: result}}``; ``{group: {series: result}}`` kept."""
    if all(isinstance(v, Mapping) for v in results.values()):
        return {str(g): dict(v) for g, v in results.items()}
    return {"": dict(results)}


def results_table(results: Mapping, *, published: Mapping | None = None, percent: bool | None = None) -> pd.DataFrame:
    """Results as a DataFrame: ``mean``, ``ci95`` (and ``n_tasks`` for ``EvalResult``-s), with a
    ``published`` column where given. ``results``/``published`` are ``{series: value}`` or
    ``{group: {series: value}}``; a value is an ``EvalResult``, a ``(mean, ci95)`` pair or a number."""
    res, pub = _nested(results), _nested(published or {})
    rows = []
    for g, series in res.items():
        for s, r in series.items():
            mean, ci = _mean_and_ci(r)
            row = {"group": g, "series": s, "mean": mean, "ci95": ci}
            if hasattr(r, "n_tasks"):
                row["n_tasks"] = r.n_tasks
            if published is not None:
                p = pub.get(g, {}).get(s, None)
                row["published"] = _mean_and_ci(p)[0] if p is not None else np.nan
            rows.append(row)
    df = pd.DataFrame(rows)
    if (df["group"] == "").all():
        df = df.drop(columns="group").set_index("series")
    else:
        df = df.set_index(["group", "series"])
    if percent:
        for c in ("mean", "ci95", "published"):
            if c in df:
                df[c] = 100 * df[c]
    return df


def result_bars(results: Mapping, *, published: Mapping | None = None, metric: str | None = None,
                percent: bool | None = None, ax: Axes | None = None, title: str | None = None) -> Figure:
    """Bars with 95% CI error bars; ``published`` values (same keys) as hatched bars next to them.

    ``results``: ``{series: value}`` or ``{group: {series: value}}`` (groups on the x axis, one bar per
    series); a value is an ``EvalResult``, a ``(mean, ci95)`` pair or a number. Accuracies
    (``EvalResult.metric == "accuracy"`` or ``percent=True``) are shown in percent. The legend stands
    right of the axes, so it never covers a bar (a figure of your own needs room for it there:
    ``layout="constrained"`` makes it).
    """
    res, pub = _nested(results), _nested(published or {})
    first = next(iter(next(iter(res.values())).values()))
    metric = metric or getattr(first, "metric", "score")
    if percent is None:
        percent = metric == "accuracy"
    scale = 100.0 if percent else 1.0
    series = list(dict.fromkeys(s for g in res.values() for s in g))
    pub_series = [s for s in series if any(s in pub.get(g, {}) for g in res)]
    bars = [(s, False) for s in series] + [(s, True) for s in pub_series]
    bars.sort(key=lambda b: (series.index(b[0]), b[1]))
    groups = list(res)
    width = 0.8 / len(bars)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 1.2 + 0.5 * len(groups) * len(bars)) + LEGEND_WIDTH, 3.4),
                             layout="constrained")
    colors = plt.get_cmap("tab10")
    for j, (s, is_pub) in enumerate(bars):
        src = pub if is_pub else res
        vals = [_mean_and_ci(src[g][s]) if s in src.get(g, {}) else (np.nan, np.nan) for g in groups]
        means = np.array([v[0] for v in vals]) * scale
        cis = np.array([v[1] for v in vals]) * scale
        xpos = np.arange(len(groups)) - 0.4 + width * (j + 0.5)
        color = colors(series.index(s))
        ax.bar(xpos, means, width * 0.92, yerr=None if is_pub else np.nan_to_num(cis), capsize=3,
               color="white" if is_pub else color, edgecolor=color, hatch="//" if is_pub else None,
               label=f"{s} (published)" if is_pub else s)
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels(groups if groups != [""] else [""])
    ax.set_ylabel(f"{column_label(metric)}{' (%)' if percent else ''}, 95% CI")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return ax.figure

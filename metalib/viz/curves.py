"""Curves: score against adaptation steps (mean and 95% CI over test tasks), and training histories.

The scores are given (e.g. from :func:`metalib.evaluate.adaptation_curve`, or ``EvalResult.scores`` stacked over
steps) and a history is the DataFrame ``meta_train`` returns; nothing here evaluates or trains.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .common import column_label, mean_and_ci

__all__ = ["adaptation_curves", "training_history", "accuracy_against_time"]


def _is_curve_map(m: Mapping) -> bool:
    return all(not isinstance(v, Mapping) for v in m.values())


def _is_curve_map_of_numbers(m: Mapping) -> bool:
    """True for ``{label: {step: number}}`` (as opposed to ``{panel: {label: {step: number}}}``)."""
    for v in m.values():
        if not isinstance(v, Mapping):
            return False
        return all(not isinstance(w, Mapping) for w in v.values())
    return True


def adaptation_curves(curves: Mapping[str, Any], *, metric: str = "MSE", reference: Mapping | None = None,
                      logy: bool = False, fig: Figure | None = None, sharey: bool = True) -> Figure:
    """Score after 0, 1, ... adaptation steps: mean line and 95% CI band over test tasks.

    ``curves``: ``{label: scores [n_tasks, steps + 1]}`` for one panel, or ``{panel title: {label: scores}}``
    for several panels side by side. ``reference``: published numbers drawn as hollow markers,
    ``{panel title: {label: {step: value}}}``, or ``{label: {step: value}}`` for the first panel.
    One line per label (and one per reference label).
    """
    panels = {"": curves} if _is_curve_map(curves) else dict(curves)
    if reference is not None and _is_curve_map_of_numbers(reference):
        reference = {title: reference for title in panels} if len(panels) == 1 else {next(iter(panels)): reference}
    if fig is None:
        fig = plt.figure(figsize=(4.2 * len(panels) + 0.4, 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=sharey, squeeze=False)[0])
    colors = plt.get_cmap("tab10")
    for ax, (title, panel) in zip(axes, panels.items()):
        for i, (label, scores) in enumerate(panel.items()):
            mean, ci = mean_and_ci(scores)
            steps = np.arange(len(mean))
            ax.plot(steps, mean, marker="o", ms=3, color=colors(i), label=label)
            ax.fill_between(steps, mean - ci, mean + ci, color=colors(i), alpha=0.2, lw=0)
        refs = (reference or {}).get(title, {})
        for j, (label, points) in enumerate(refs.items()):
            k = sorted(points)
            ax.plot(k, [points[s] for s in k], ls="none", marker="s", ms=7, mfc="none", mew=1.5,
                    color=colors(j), label=label)
        ax.set_xlabel("adaptation steps")
        ax.set_title(title, fontsize=10)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if refs or ax is axes[-1]:
            ax.legend(fontsize=8)
    axes[0].set_ylabel(f"{column_label(metric)} (mean, 95% CI)")
    fig.tight_layout()
    return fig


def _default_metrics(runs: Mapping[str, pd.DataFrame]) -> list[str]:
    """Every ``train_*``/``val_*`` column but ``val_ci95``, without ``train_loss`` where it equals another train
    column (as for regression, where the loss is the MSE)."""
    cols: list[str] = []
    for df in runs.values():
        cols += [c for c in df.columns if c.startswith(("train_", "val_")) and c != "val_ci95" and c not in cols]
    if "train_loss" in cols:
        others = [c for c in cols if c.startswith("train_") and c != "train_loss"]
        if any(all(np.allclose(df["train_loss"], df[o]) for df in runs.values() if "train_loss" in df and o in df)
               for o in others):
            cols.remove("train_loss")
    return cols


def _x_label(x: str) -> str:
    return {"step": "meta-iteration", "time_s": "training time (s)"}.get(x, column_label(x))


def training_history(history: pd.DataFrame | Mapping[str, pd.DataFrame], *, metrics: Sequence[str] | None = None,
                     x: str = "step", logy: bool = False, fig: Figure | None = None) -> Figure:
    """Curves of a ``meta_train`` history (columns ``step``, ``train_*``, ``val_*``, ``time_s``).

    ``history`` is one DataFrame or ``{run name: DataFrame}`` to compare runs. One axes per metric
    (default: every ``train_*``/``val_*`` column except ``val_ci95``, and ``train_loss`` when it
    equals another train column, as for regression); ``val_*`` gets its 95% CI band when
    ``val_ci95`` is present. ``x`` is a column (``"step"``, ``"time_s"``, ...). Titles and the x label are
    the column names in words (:func:`~metalib.viz.common.column_label`: ``"peak_MB"`` -> ``"peak (MB)"``).
    """
    runs = {"": history} if isinstance(history, pd.DataFrame) else dict(history)
    metrics = _default_metrics(runs) if metrics is None else list(metrics)
    if not metrics:
        raise ValueError("no train_*/val_* columns to plot")
    if fig is None:
        fig = plt.figure(figsize=(4.0 * len(metrics) + 0.4, 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)[0])
    colors = plt.get_cmap("tab10")
    for ax, m in zip(axes, metrics):
        band = m.startswith("val_")
        for i, (name, df) in enumerate(runs.items()):
            if m not in df or df[m].isna().all():
                continue
            d = df[[x, m] + (["val_ci95"] if band and "val_ci95" in df else [])].dropna()
            ax.plot(d[x], d[m], marker="o", ms=3, color=colors(i), label=name or None)
            if "val_ci95" in d and band:
                ax.fill_between(d[x], d[m] - d["val_ci95"], d[m] + d["val_ci95"], color=colors(i), alpha=0.2, lw=0)
        ax.set_title(column_label(m), fontsize=10)
        ax.set_xlabel(_x_label(x))
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if len(runs) > 1 or next(iter(runs)):
        axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_against_time(curves: Mapping[str, pd.DataFrame], *, published: Mapping[str, float] | None = None,
                          minutes: bool = True, ax=None) -> Figure:
    """Test accuracy (%) with its 95% interval against training time, one line per run.

    ``curves``: ``{run: DataFrame with time_s, mean, ci95}`` (e.g. :func:`metalib.pretrained.curves`);
    ``published``: ``{run: accuracy}`` drawn as a dotted line in the run's colour.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
    scale, unit = (60.0, "min") if minutes else (1.0, "s")
    for i, (name, c) in enumerate(curves.items()):
        color = f"C{i % 10}"
        t = c["time_s"] / scale
        ax.plot(t, 100 * c["mean"], marker="o", ms=3, color=color, label=name)
        ax.fill_between(t, 100 * (c["mean"] - c["ci95"]), 100 * (c["mean"] + c["ci95"]), color=color, alpha=0.2)
        if published and published.get(name) is not None:
            ax.axhline(100 * published[name], color=color, ls=":", lw=1.2, label=f"{name}: published")
    ax.set(xlabel=f"training time ({unit})", ylabel="test accuracy (%)", title="accuracy against training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return ax.figure

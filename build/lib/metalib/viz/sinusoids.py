"""Figures of sinusoid regression tasks: the task family, and model fits after adaptation steps.

Curves may be given as ``[B, P, 1]``, ``[B, P]`` or (one shared x grid) ``[P]``; the predictions to draw come
from :func:`metalib.evaluate.adapted_predictions` (nothing here adapts a model).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .common import POINT_COLOR, TRUE_COLOR, as_curves, steps_label

__all__ = ["sinusoid_family", "sinusoid_fits", "draw_fits"]


def draw_fits(ax: Axes, x: Any, y_true: Any, support_x: Any, support_y: Any,
              curves: Sequence[tuple[str, Any, Mapping[str, Any]]] = (), *, lw: float = 2.0, size: float = 36,
              support_label: str = "support points") -> None:
    """Draw one regression task into ``ax``: its true function (red), ``curves`` (``(label, y [P], line style)``
    each, e.g. a model's predictions) and its support points (triangles). Inputs are one task's ``[P(, 1)]``."""
    xs = as_curves(x)[0]
    ax.plot(xs, as_curves(y_true)[0], color=TRUE_COLOR, lw=lw, label="true function")
    for label, y, style in curves:
        ax.plot(xs, as_curves(y)[0], label=label, **style)
    ax.scatter(as_curves(support_x)[0], as_curves(support_y)[0], marker="^", color=POINT_COLOR, s=size, zorder=4,
               label=support_label)


def sinusoid_family(x: Any, y: Any, *, support_x: Any = None, support_y: Any = None, max_tasks: int = 8,
                    ax: Axes | None = None, title: str | None = None) -> Figure:
    """Draw the true functions of a few sinusoid tasks (``x, y`` ``[B, P(, 1)]``, e.g. from
    ``SinusoidTasks.true_curve``) with their support points: one line per task."""
    xs, ys = as_curves(x), as_curves(y)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.2), layout="constrained")
    colors = plt.get_cmap("tab10")
    n = min(len(ys), max_tasks)
    for i in range(n):
        ax.plot(xs[i % len(xs)], ys[i], color=colors(i % 10), lw=1.5)
        if support_x is not None and support_y is not None:
            ax.scatter(as_curves(support_x)[i], as_curves(support_y)[i], color=colors(i % 10), s=18, zorder=3)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title or f"{n} sinusoid tasks" + (" and their support points" if support_x is not None else ""))
    return ax.figure


def sinusoid_fits(x: Any, y_true: Any, support_x: Any, support_y: Any,
                  predictions: Mapping[str, Mapping[Any, Any]], *, max_tasks: int = 4,
                  ylim: tuple[float, float] | None = (-6, 6), fig: Figure | None = None) -> Figure:
    """Fits of models to new sinusoid tasks: one row per model, one column per task.

    ``x``/``y_true`` ``[B, P(, 1)]`` the true functions (x may be ``[P]``), ``support_x/y`` ``[B, K(, 1)]``,
    ``predictions`` ``{model: {steps or label: [B, P(, 1)]}}`` (e.g. from
    :func:`metalib.evaluate.adapted_predictions`; integer keys are labelled "pre-update", "1 step", "10 steps").
    Each axes has the true function, one line per curve, and the support points.
    """
    xs, yt, sx, sy = as_curves(x), as_curves(y_true), as_curves(support_x), as_curves(support_y)
    n = min(len(yt), max_tasks)
    nrows = len(predictions)
    if fig is None:
        fig = plt.figure(figsize=(3.0 * n + 0.6, 2.5 * nrows + 0.6))
    axes = np.atleast_2d(fig.subplots(nrows, n, sharex=True, sharey=True, squeeze=False))
    for r, (model, curves) in enumerate(predictions.items()):
        shades = plt.get_cmap("Greens" if r % 2 else "Blues")(np.linspace(0.35, 0.95, max(len(curves), 1)))
        styles = [{"color": shades[j], "lw": 1.6, "ls": "--" if j == 0 else "-"} for j in range(len(curves))]
        preds = [(steps_label(label), as_curves(pred)) for label, pred in curves.items()]
        for c in range(n):
            ax = axes[r, c]
            lines = [(label, p[c], style) for (label, p), style in zip(preds, styles)]
            draw_fits(ax, xs[c % len(xs)], yt[c], sx[c], sy[c], lines)
            if ylim is not None:
                ax.set_ylim(*ylim)
            if r == 0:
                ax.set_title(f"task {c + 1}, K = {sx.shape[1]}", fontsize=10)
            if c == 0:
                ax.set_ylabel(model)
        axes[r, -1].legend(fontsize=7, loc="upper right", framealpha=0.8)
    fig.tight_layout()
    return fig

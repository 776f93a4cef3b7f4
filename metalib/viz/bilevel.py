"""The bilevel picture of MAML: the meta-parameters' path pulled by the meta-gradient (upper level), and
each task's adapted parameters around them (lower level), each projected on its top-2 principal plane.

What to draw (parameter snapshots, meta-gradients, adapted-minus-initial parameters) is computed by the
caller, e.g. from ``meta_train`` snapshots with ``learner.adapted_params`` and ``learner.meta_gradient``.
"""
from __future__ import annotations

import math

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

__all__ = ["bilevel_picture"]

PULL_COLOR = "crimson"


def _plane(vectors: Tensor, center: bool = True) -> Tensor:
    """The top-2 right singular vectors of the rows (centred or not): a ``[2, P]`` basis."""
    x = vectors - vectors.mean(0) if center else vectors
    return torch.linalg.svd(x, full_matrices=False)[2][:2]


def _upper_level(ax: Axes, thetas: Tensor, meta_grads: Sequence[Tensor], labels: Sequence[Any]) -> None:
    basis = _plane(thetas)
    xy = ((thetas - thetas.mean(0)) @ basis.T).numpy()
    ax.plot(xy[:, 0], xy[:, 1], "-o", color="k", lw=2, ms=6, zorder=3, label="$\\theta$ during meta-training")
    pulls = np.stack([(-g / g.norm() @ basis.T).numpy() for g in meta_grads])  # in-plane part of each direction
    pulls *= 0.6 * np.median(np.linalg.norm(np.diff(xy, axis=0), axis=1)) / np.linalg.norm(pulls, axis=1).max()
    for (x, y), (u, v), label in zip(xy, pulls, labels):
        ax.scatter(x + u, y + v, s=1, color=PULL_COLOR)
        ax.annotate("", (x + u, y + v), (x, y), arrowprops={"arrowstyle": "-|>", "color": PULL_COLOR, "lw": 2})
        ax.annotate(f"{label}", (x, y), textcoords="offset points", xytext=(-4, 8), fontsize=8)
    ax.plot([], [], color=PULL_COLOR, lw=2, label="$-$meta-gradient $g_t$ (direction)")
    ax.set(xlabel="trajectory PC 1", ylabel="trajectory PC 2",
           title="upper level: $\\theta$ pulled by the meta-gradient")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _lower_level(ax: Axes, steps: Tensor, limit: float, label: Any) -> None:
    colors = plt.get_cmap("tab10")
    uv = (steps @ _plane(steps, center=False).T).numpy()
    for i, (u, v) in enumerate(uv):
        ax.scatter(u, v, s=12, color=colors(i % 10))
        ax.annotate("", (u, v), (0, 0), arrowprops={"arrowstyle": "->", "color": colors(i % 10), "lw": 1.5})
        # labels sit beyond the arrow head, along its direction, so that nearby arrows do not stack them
        angle = math.atan2(v, u)
        ax.annotate(f"$\\theta'_{{{i}}}$", (u, v), textcoords="offset points", fontsize=9, color=colors(i % 10),
                    xytext=(10 * math.cos(angle), 10 * math.sin(angle)), ha="center", va="center")
    ax.scatter(0, 0, s=80, color="k", zorder=4, label="$\\theta$")
    ax.scatter(*uv.mean(0), marker="*", s=200, color="gray", zorder=4, label="mean of $\\theta'_i$ (Reptile's target)")
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal", xlabel="task-step PC 1",
           ylabel="task-step PC 2", title=f"lower level at meta-iteration {label}: each task's adapted $\\theta'_i$")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)


def bilevel_picture(thetas: Any, meta_grads: Sequence[Any], task_steps: Sequence[Any], *,
                    labels: Sequence[Any] | None = None, fig: Figure | None = None) -> Figure:
    """Three axes: the path of the meta-parameters ``thetas`` ``[S, P]`` (one row per snapshot) with the
    direction of ``-meta_grads[s]`` ``[P]`` at each snapshot, then the task steps ``task_steps[s]``
    ``[tasks, P]`` (adapted minus initial parameters) at the first and at the last snapshot.
    ``labels`` name the snapshots (e.g. their meta-iterations; default 0, 1, ...)."""
    thetas = torch.stack([torch.as_tensor(t) for t in thetas]).detach().cpu().double()
    grads = [torch.as_tensor(g).detach().cpu().double() for g in meta_grads]
    steps = [torch.as_tensor(d).detach().cpu().double() for d in (task_steps[0], task_steps[-1])]
    labels = list(range(len(thetas))) if labels is None else list(labels)
    if not len(thetas) == len(grads) == len(task_steps) == len(labels):
        raise ValueError(f"one meta-gradient, task steps and label per snapshot: {len(thetas)} snapshots, "
                         f"{len(grads)} meta-gradients, {len(task_steps)} task steps, {len(labels)} labels")
    if fig is None:
        fig = plt.figure(figsize=(15, 4.8), layout="constrained")
    axes = fig.subplots(1, 3)
    _upper_level(axes[0], thetas, grads, labels)
    limit = 1.15 * max(d.norm(dim=1).max().item() for d in steps)
    for ax, d, label in ((axes[1], steps[0], labels[0]), (axes[2], steps[1], labels[-1])):
        _lower_level(ax, d, limit, label)
    return fig

"""Interactive views (ipywidgets) with a static fallback.

Each builder returns an ``ipywidgets.interactive`` widget and, with ``static=True`` (the default),
also draws the figure for the default values with plain matplotlib and displays it. In JupyterLab
the sliders redraw the view; in a headless run (papermill, CI, a static HTML export) the static
figure is what the reader sees. The figure is kept on the widget as ``widget.static_figure``.

=====================  ==================================================================
``episode_browser``    episodes of a class split: ways, shots, queries, seed
``sinusoid_view``      learners adapting to one sinusoid: amplitude, phase, shots, steps
=====================  ==================================================================

The drawing functions (``draw_episode``, ``draw_sinusoid_adaptation``) can be called directly.
"""
from __future__ import annotations

import math
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display
from matplotlib.figure import Figure

from . import plots
from .data.base import ClassSplit
from .tasks import EpisodeSampler, SinusoidTasks, TaskBatch

__all__ = ["episode_browser", "draw_episode", "sinusoid_view", "draw_sinusoid_adaptation", "sinusoid_task"]


def _show(fig: Figure | None) -> None:
    """Display ``fig`` once (inline backend or not) and release it."""
    if fig is not None:
        display(fig)
        plt.close(fig)


def _finish(widget, draw, kwargs: dict, static: bool):
    widget.static_figure = None
    if static:
        fig = draw(**kwargs)
        _show(fig)
        widget.static_figure = fig
    return widget


# ------------------------------------------------------------------------------------ episode browser

def draw_episode(split: ClassSplit, ways: int = 5, shots: int = 1, queries: int = 2, seed: int = 0,
                 task: int = 0) -> Figure | None:
    """Figure of task ``task`` of ``EpisodeSampler(split, ways, shots, queries, seed=seed)``.

    An impossible request (more ways than classes, more shots + queries than drawings) prints the
    sampler's error message and returns None instead of raising.
    """
    try:
        sampler = EpisodeSampler(split, ways, shots, queries, seed=seed)
    except ValueError as err:
        print(f"ValueError: {err}")
        return None
    batch = sampler.task(task)
    return plots.episode_grid(batch, class_names=split.class_names, max_ways=ways, max_shots=shots,
                              max_queries=queries,
                              title=f"split {split.name!r}: {ways}-way {shots}-shot, {queries} queries per class, "
                                    f"seed {seed}, task {task}")


def episode_browser(split: ClassSplit, *, ways: int = 5, shots: int = 1, queries: int = 2, seed: int = 0,
                    max_ways: int = 20, max_shots: int = 10, max_queries: int = 15, static: bool = True):
    """Browse episodes of ``split``: sliders for ways, shots, queries and the sampler seed (task 0).

    Returns the ``interactive`` widget; with ``static=True`` the default episode is also drawn and
    displayed with matplotlib (``widget.static_figure``).
    """
    import ipywidgets as w

    def view(ways: int, shots: int, queries: int, seed: int) -> None:
        _show(draw_episode(split, ways, shots, queries, seed))

    widget = w.interactive(
        view,
        ways=w.IntSlider(value=ways, min=2, max=max_ways, description="ways N"),
        shots=w.IntSlider(value=shots, min=1, max=max_shots, description="shots K"),
        queries=w.IntSlider(value=queries, min=1, max=max_queries, description="queries"),
        seed=w.IntText(value=seed, description="seed"),
    )
    return _finish(widget, draw_episode, {"split": split, "ways": ways, "shots": shots, "queries": queries,
                                          "seed": seed}, static)


# ------------------------------------------------------------------------------- sinusoid adaptation

def sinusoid_task(amplitude: float, phase: float, shots: int, *, seed: int = 0, num_points: int = 200,
                  x_range: tuple[float, float] = (-5.0, 5.0), device: torch.device | str = "cpu") -> TaskBatch:
    """One sinusoid task ``amplitude * sin(x - phase)`` with ``shots`` support points drawn uniformly
    from ``x_range`` (seeded), and a dense grid of ``num_points`` as its query set (for plotting)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = x_range
    sx = (lo + (hi - lo) * torch.rand(1, shots, 1, generator=g))
    qx = torch.linspace(lo, hi, num_points).view(1, -1, 1)
    amp, ph = torch.tensor([float(amplitude)]), torch.tensor([float(phase)])
    batch = TaskBatch(sx, SinusoidTasks.sinusoid(sx, amp, ph), qx, SinusoidTasks.sinusoid(qx, amp, ph),
                      {"amplitude": amp, "phase": ph})
    return batch.to(device)


def draw_sinusoid_adaptation(learners: Mapping[str, object], amplitude: float = 2.0, phase: float = 1.0,
                             shots: int = 5, steps: int = 1, seed: int = 0, ylim: tuple[float, float] = (-6, 6)
                             ) -> Figure:
    """One axes: the true function, the support points, and for each learner its prediction before
    (dashed) and after ``steps`` adaptation steps (solid) with its own inner learning rate."""
    device = next(next(iter(learners.values())).model.parameters()).device
    task = sinusoid_task(amplitude, phase, shots, seed=seed, device=device)
    fig, ax = plt.subplots(figsize=(6.5, 3.6), layout="constrained")
    x = plots.to_numpy(task.query_x[0, :, 0])
    ax.plot(x, plots.to_numpy(task.query_y[0, :, 0]), color="#d62728", lw=2.2, label="true function")
    colors = plt.get_cmap("tab10")
    for i, (name, learner) in enumerate(learners.items()):
        preds = plots.adapted_predictions(learner, task, task.query_x, steps=sorted({0, int(steps)}))
        ax.plot(x, preds[0][0], color=colors(i), lw=1.3, ls="--", label=f"{name}, pre-update")
        if steps > 0:
            mse = float(np.mean((preds[int(steps)][0] - plots.to_numpy(task.query_y[0, :, 0])) ** 2))
            ax.plot(x, preds[int(steps)][0], color=colors(i), lw=2,
                    label=f"{name}, {steps} step{'s' if steps > 1 else ''} (MSE {mse:.2f})")
    ax.scatter(plots.to_numpy(task.support_x[0, :, 0]), plots.to_numpy(task.support_y[0, :, 0]), marker="^",
               s=50, color="#9467bd", zorder=4, label=f"{shots} support points")
    ax.set_ylim(*ylim)
    ax.set_xlabel("x")
    ax.set_title(f"y = {amplitude:.2f} sin(x - {phase:.2f}),  K = {shots},  {steps} adaptation steps", fontsize=10)
    ax.legend(fontsize=7, loc="upper right", ncol=1 + (len(learners) > 1), framealpha=0.85)
    return fig


def sinusoid_view(learners: Mapping[str, object], *, amplitude: float = 2.0, phase: float = 1.0, shots: int = 5,
                  steps: int = 1, seed: int = 0, max_shots: int = 20, max_steps: int = 10, static: bool = True):
    """Adapt ``learners`` (``{name: gradient learner}``, e.g. MAML and the pre-trained baseline) to a
    sinusoid of your choice: sliders for amplitude, phase, shots and adaptation steps.

    Returns the ``interactive`` widget; with ``static=True`` the default view is also drawn and
    displayed with matplotlib (``widget.static_figure``).
    """
    import ipywidgets as w

    def view(amplitude: float, phase: float, shots: int, steps: int) -> None:
        _show(draw_sinusoid_adaptation(learners, amplitude, phase, shots, steps, seed))

    widget = w.interactive(
        view,
        amplitude=w.FloatSlider(value=amplitude, min=0.1, max=5.0, step=0.1, description="amplitude"),
        phase=w.FloatSlider(value=phase, min=0.0, max=round(math.pi, 2), step=0.05, description="phase"),
        shots=w.IntSlider(value=shots, min=1, max=max_shots, description="shots K"),
        steps=w.IntSlider(value=steps, min=0, max=max_steps, description="steps"),
    )
    return _finish(widget, draw_sinusoid_adaptation, {"learners": learners, "amplitude": amplitude, "phase": phase,
                                                      "shots": shots, "steps": steps, "seed": seed}, static)

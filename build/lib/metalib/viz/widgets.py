"""Interactive views (ipywidgets) whose default figure is also there where widgets cannot render.

=====================  ==================================================================
``episode_browser``    episodes of a class split: ways, shots, queries, seed
``sinusoid_view``      learners adapting to one sinusoid: amplitude, phase, shots, steps
=====================  ==================================================================

Each builder returns an ``ipywidgets.interactive`` widget, whose sliders redraw the view. The figure for the
default values (``widget.static_figure``) is shown by the rule of :func:`figure_mode`, through ``static``:

* ``static=None`` (the default): ``METALIB_STATIC_FIGURES=1`` / ``0`` in the environment means ``True`` /
  ``False``. Unset, under an IPython kernel (JupyterLab, Notebook, VS Code, papermill), the figure travels as a
  PNG *inside the widget's own output*, next to the widget view: a frontend that renders widgets shows the live
  widget alone, and where widgets cannot render (a papermill/nbclient run read on GitHub, nbconvert, an
  untrusted notebook) the PNG is what the reader sees. A kernel cannot tell whether a widget frontend is
  listening (JupyterLab announces itself only when it connects, not after a kernel restart), so the frontend
  makes that choice. Without a kernel (a script, a terminal), the figure is displayed on its own.
* ``static=True``: the figure is also displayed on its own, as a plain figure (twice in JupyterLab).
* ``static=False``: the live widget only (``widget.static_figure`` is None).

The drawing functions (``draw_episode``, ``draw_sinusoid_adaptation``) can be called directly. They draw:
adapted predictions come from :func:`metalib.evaluate.adapted_predictions`, the task from
``SinusoidTasks.task_with``.
"""
from __future__ import annotations

import base64
import io
import math
import os
from typing import Any, Callable, Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..data import ClassSplit
from ..evaluate import adapted_predictions
from ..tasks import EpisodeSampler, SinusoidTasks
from . import require_extra
from .common import as_curves, plural, steps_label
from .episodes import episode_grid
from .sinusoids import draw_fits

w = require_extra("ipywidgets")  # before IPython, which comes with it

from IPython import get_ipython  # noqa: E402
from IPython.display import display  # noqa: E402

__all__ = ["episode_browser", "draw_episode", "sinusoid_view", "draw_sinusoid_adaptation", "figure_mode",
           "STATIC_ENV"]

STATIC_ENV = "METALIB_STATIC_FIGURES"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _kernel_running() -> bool:
    """True under an IPython kernel (the only place a widget can be shown at all)."""
    return getattr(get_ipython(), "kernel", None) is not None


def figure_mode(static: bool | None = None) -> str:
    """How a builder shows its default figure: ``"figure"`` (displayed on its own), ``"fallback"`` (a PNG in
    the widget's output, for viewers without widgets) or ``"none"``; the rule is in the module docstring."""
    if static is None:
        value = os.environ.get(STATIC_ENV, "").strip().lower()
        if value and value not in _TRUE + _FALSE:
            raise ValueError(f"{STATIC_ENV}={value!r}: use 1 (static figures) or 0 (live widgets only)")
        if not value:
            return "fallback" if _kernel_running() else "figure"
        static = value in _TRUE
    return "figure" if static else "none"


class _Interactive(w.interactive):
    """``interactive`` whose display bundle also carries a PNG of its default figure (``fallback_png``)."""

    fallback_png: str | None = None

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | None:
        bundle = super()._repr_mimebundle_(**kwargs)
        if bundle is not None and self.fallback_png:
            bundle = {**bundle, "image/png": self.fallback_png}
        return bundle


def _show(fig: Figure | None) -> None:
    """Display ``fig`` once (inline backend or not) and release it."""
    if fig is not None:
        display(fig)
        plt.close(fig)


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _live_view(draw: Callable[..., Figure | None], fixed: Mapping[str, Any], controls: Mapping[str, Any],
               static: bool | None) -> _Interactive:
    """An ``interactive`` drawing ``draw(**fixed, **values of controls)``; its first figure (the default view,
    drawn once by ``interactive``) is shown by :func:`figure_mode`."""
    drawn: list[Figure | None] = []

    def view(**values: Any) -> None:
        fig = draw(**fixed, **values)
        if not drawn:
            drawn.append(fig)
        _show(fig)

    widget = _Interactive(view, **controls)
    mode, fig = figure_mode(static), drawn[0] if drawn else None
    widget.static_figure = fig if mode != "none" else None
    if fig is not None and mode == "fallback":
        widget.fallback_png = _png(fig)
    elif fig is not None and mode == "figure":
        display(fig)
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
    return episode_grid(sampler.task(task), class_names=split.class_names, max_ways=ways, max_shots=shots,
                        max_queries=queries,
                        title=f"split {split.name!r}: {ways}-way {shots}-shot, "
                              f"{plural(queries, 'query', 'queries')} per class, seed {seed}, task {task}")


def episode_browser(split: ClassSplit, *, ways: int = 5, shots: int = 1, queries: int = 2, seed: int = 0,
                    max_ways: int = 20, max_shots: int = 10, max_queries: int = 15,
                    static: bool | None = None) -> w.interactive:
    """Browse episodes of ``split``: sliders for ways, shots, queries and the sampler seed (task 0).

    Returns the ``interactive`` widget; its default episode is shown by the module's ``static`` rule
    (``widget.static_figure``).
    """
    return _live_view(draw_episode, {"split": split}, {
        "ways": w.IntSlider(value=ways, min=2, max=max_ways, description="ways N"),
        "shots": w.IntSlider(value=shots, min=1, max=max_shots, description="shots K"),
        "queries": w.IntSlider(value=queries, min=1, max=max_queries, description="queries"),
        "seed": w.IntText(value=seed, description="seed"),
    }, static)


# ------------------------------------------------------------------------------- sinusoid adaptation

def draw_sinusoid_adaptation(learners: Mapping[str, Any], amplitude: float = 2.0, phase: float = 1.0,
                             shots: int = 5, steps: int = 1, seed: int = 0, ylim: tuple[float, float] = (-6, 6)
                             ) -> Figure:
    """One axes: the true function, the support points, and for each learner its prediction before
    (dashed) and after ``steps`` adaptation steps (solid), from :func:`metalib.evaluate.adapted_predictions`
    (each learner's own inner loop) on ``SinusoidTasks(shots).task_with(amplitude, phase, seed=seed)``."""
    device = next(next(iter(learners.values())).model.parameters()).device
    task = SinusoidTasks(shots, device=device).task_with(amplitude, phase, seed=seed)
    y_true = as_curves(task.query_y)[0]
    colors = plt.get_cmap("tab10")
    lines = []
    for i, (name, learner) in enumerate(learners.items()):
        preds = adapted_predictions(learner, task, task.query_x, steps=sorted({0, int(steps)}))
        lines.append((f"{name}, {steps_label(0)}", preds[0][0], {"color": colors(i), "lw": 1.3, "ls": "--"}))
        if steps > 0:
            adapted = as_curves(preds[int(steps)])[0]
            mse = float(np.mean((adapted - y_true) ** 2))
            lines.append((f"{name}, {steps_label(int(steps))} (MSE {mse:.2f})", adapted, {"color": colors(i), "lw": 2}))
    fig, ax = plt.subplots(figsize=(6.5, 3.6), layout="constrained")
    draw_fits(ax, task.query_x[0], y_true, task.support_x[0], task.support_y[0], lines, lw=2.2, size=50,
              support_label=f"{plural(shots, 'support point')}")
    ax.set_ylim(*ylim)
    ax.set_xlabel("x")
    ax.set_title(f"y = {amplitude:.2f} sin(x - {phase:.2f}),  K = {shots},  {plural(steps, 'adaptation step')}",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper right", ncol=1 + (len(learners) > 1), framealpha=0.85)
    return fig


def sinusoid_view(learners: Mapping[str, Any], *, amplitude: float = 2.0, phase: float = 1.0, shots: int = 5,
                  steps: int = 1, seed: int = 0, max_shots: int = 20, max_steps: int = 10,
                  static: bool | None = None) -> w.interactive:
    """Adapt ``learners`` (``{name: gradient learner}``, e.g. MAML and the pre-trained baseline) to a
    sinusoid of your choice: sliders for amplitude, phase, shots and adaptation steps.

    Returns the ``interactive`` widget; its default view is shown by the module's ``static`` rule
    (``widget.static_figure``).
    """
    return _live_view(draw_sinusoid_adaptation, {"learners": learners, "seed": seed}, {
        "amplitude": w.FloatSlider(value=amplitude, min=0.1, max=5.0, step=0.1, description="amplitude"),
        "phase": w.FloatSlider(value=phase, min=0.0, max=round(math.pi, 2), step=0.05, description="phase"),
        "shots": w.IntSlider(value=shots, min=1, max=max_shots, description="shots K"),
        "steps": w.IntSlider(value=steps, min=0, max=max_steps, description="steps"),
    }, static)

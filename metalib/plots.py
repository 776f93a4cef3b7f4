"""Figures shared by the notebooks: episodes, the task-structure diagram, sinusoids, curves, results.

Every function draws with matplotlib and returns the ``Figure`` (functions that take ``ax=`` draw into
that axes and return its figure). Inputs may be torch tensors, NumPy arrays or lists; nothing here
trains or changes a model. :func:`adapted_predictions` is the one helper that runs a learner: it
adapts it to a few tasks (through the learner's own ``adapt``) to get curves to draw.

=========================  ======================================================================
``episode_grid``           one episode: support set and query set, one row per class
``character_rotations``    a character in its four rotations (0, 90, 180, 270 degrees)
``task_structure``         meta-train / meta-test task sets, each task with its support and query set
``sinusoid_family``        a few tasks of the sinusoid family with their support points
``sinusoid_fits``          model fits to new tasks after 0, 1, ... adaptation steps
``adaptation_curves``      score vs. adaptation steps, mean and 95% CI band over test tasks
``training_history``       train_* / val_* columns of a ``meta_train`` history against step or time
``result_bars``            bars with 95% CI error bars, published numbers next to them
``results_table``          the same numbers as a DataFrame
=========================  ======================================================================

Omniglot strokes are stored bright on a dark background; images are drawn with the ``gray_r``
colour map, i.e. dark strokes on white paper.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

__all__ = [
    "to_numpy", "image_mosaic", "short_class_name", "episode_grid", "character_rotations", "task_structure",
    "sinusoid_family", "sinusoid_fits", "adapted_predictions", "mean_ci", "adaptation_curves",
    "training_history", "result_bars", "results_table",
]

IMAGE_CMAP = "gray_r"
SUPPORT_COLOR = "#1f77b4"
QUERY_COLOR = "#ff7f0e"
Z95 = 1.96


# ------------------------------------------------------------------------------------------- helpers

def to_numpy(x: Any) -> np.ndarray:
    """A tensor (any device, with or without grad), array or list as a NumPy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _images(x: Any) -> np.ndarray:
    """Images ``[..., 1, H, W]`` or ``[..., H, W]`` as float ``[..., H, W]`` in [0, 1]."""
    a = to_numpy(x)
    if a.ndim >= 3 and a.shape[-3] == 1:
        a = a[..., 0, :, :]
    a = a.astype(np.float32)
    return a / 255.0 if a.max(initial=0.0) > 1.0 else a


def image_mosaic(images: Any, nrows: int, ncols: int, *, pad: int = 2, fill: float = 0.0) -> np.ndarray:
    """Tile ``images`` ``[n, H, W]`` (``n <= nrows * ncols``, row-major) into one ``[rows*(H+pad)-pad, ...]`` array.

    Missing cells and the padding get ``fill`` (0 = background for bright strokes).
    """
    imgs = _images(images)
    if imgs.ndim != 3:
        raise ValueError(f"image_mosaic expects images [n, H, W] (or [n, 1, H, W]), got shape {imgs.shape}")
    n, h, w = imgs.shape
    if n > nrows * ncols:
        raise ValueError(f"{n} images do not fit a {nrows}x{ncols} mosaic")
    out = np.full((nrows * (h + pad) - pad, ncols * (w + pad) - pad), fill, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = imgs[i]
    return out


def short_class_name(name: str) -> str:
    """``"Alphabet_Name/character07/rot090"`` -> ``"Alphabet Name 07 (90°)"``."""
    parts = name.split("/")
    alphabet = parts[0].replace("_", " ")
    char = parts[1].replace("character", "") if len(parts) > 1 else ""
    rot = ""
    if len(parts) > 2 and parts[2].startswith("rot"):
        rot = f" ({int(parts[2][3:])}°)"
    return f"{alphabet} {char}{rot}".strip()


def _is_classification(batch) -> bool:
    return batch.support_x.ndim >= 4


def _label_images(x: Any, y: Any, ways: int, per_class: int) -> np.ndarray:
    """Images ``[ways, per_class, H, W]`` grouped by label (first ``per_class`` of each label)."""
    imgs, labels = _images(x), to_numpy(y)
    out = np.zeros((ways, per_class) + imgs.shape[-2:], dtype=np.float32)
    for c in range(ways):
        idx = np.flatnonzero(labels == c)[:per_class]
        out[c, : len(idx)] = imgs[idx]
    return out


# ------------------------------------------------------------------------------------------ episodes

def episode_grid(batch, task: int = 0, *, class_names: Sequence[str] | None = None, max_ways: int = 10,
                 max_shots: int = 5, max_queries: int = 5, title: str | None = None,
                 fig: Figure | None = None) -> Figure:
    """Draw one classification episode of ``batch`` (a ``TaskBatch``): support set left, query set right.

    One row per class (the episode's label ``0..N-1``; with ``class_names`` -- the split's
    ``class_names`` -- the row also names the class). Two axes, one image each.
    """
    if not _is_classification(batch):
        raise ValueError("episode_grid draws image episodes; use sinusoid_family for regression tasks")
    ways_all = int(to_numpy(batch.support_y[task]).max()) + 1
    ways = min(ways_all, max_ways)
    shots_all = int(batch.support_y.shape[1]) // ways_all
    queries_all = int(batch.query_y.shape[1]) // ways_all
    shots, queries = min(shots_all, max_shots), min(queries_all, max_queries)
    support = _label_images(batch.support_x[task], batch.support_y[task], ways, shots)
    query = _label_images(batch.query_x[task], batch.query_y[task], ways, queries)
    h = support.shape[-2]
    if fig is None:
        fig = plt.figure(figsize=(1.0 + 0.5 * (shots + queries) + (2.6 if class_names else 0.3), 0.9 + 0.5 * ways),
                         layout="constrained")
    axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(shots, 1), max(queries, 1)], "wspace": 0.05})
    names = None
    if class_names is not None and "class_ids" in batch.info:
        ids = to_numpy(batch.info["class_ids"][task])
        names = [short_class_name(class_names[int(i)]) for i in ids[:ways]]
    for ax, imgs, what, k, k_all, color in ((axes[0], support, "support", shots, shots_all, SUPPORT_COLOR),
                                            (axes[1], query, "query", queries, queries_all, QUERY_COLOR)):
        ax.imshow(image_mosaic(imgs.reshape(-1, *imgs.shape[-2:]), ways, k), cmap=IMAGE_CMAP, vmin=0, vmax=1)
        shown = f"{k} of {k_all}" if k < k_all else f"{k}"
        ax.set_title(f"{what} set ({shown} per class)", color=color, fontsize=10)
        ax.set_xticks([])
        for side in ax.spines.values():
            side.set_edgecolor(color)
            side.set_linewidth(2)
        ax.set_yticks([(h + 2) * c + h / 2 for c in range(ways)])
        ax.set_yticklabels([])
    labels = [f"{c}" if names is None else f"{c}: {names[c]}" for c in range(ways)]
    axes[0].set_yticklabels(labels, fontsize=8)
    axes[1].tick_params(left=False)
    n_total = ways_all
    fig.suptitle(title or f"{n_total}-way {shots_all}-shot episode ({queries_all} queries per class)"
                 + ("" if ways == ways_all else f", first {ways} classes shown"), fontsize=11)
    return fig


def character_rotations(split, character: str | int, *, drawings: int = 4, fig: Figure | None = None) -> Figure:
    """A character of a rotated split (``omniglot_splits("vinyals")``) in its four rotations.

    ``character`` is ``"Alphabet/characterNN"`` or the index of any of its classes in ``split``.
    Each of the four classes (0, 90, 180, 270 degrees counter-clockwise) shows its first ``drawings``
    drawings: 4 axes, one image each.
    """
    names = list(split.class_names)
    if isinstance(character, int):
        character = names[character].rsplit("/", 1)[0]
    found = [(i, n) for i, n in enumerate(names) if n.rsplit("/", 1)[0] == character and "/rot" in n]
    if not found:
        raise ValueError(f"no rotated classes of {character!r} in split {split.name!r} "
                         "(rotations exist in omniglot_splits('vinyals') or with rotations=True)")
    found.sort(key=lambda t: t[1])
    cols = math.ceil(math.sqrt(drawings))
    rows = math.ceil(drawings / cols)
    if fig is None:
        fig = plt.figure(figsize=(2.2 * len(found), 2.4))
    axes = np.atleast_1d(fig.subplots(1, len(found)))
    for ax, (i, name) in zip(axes, found):
        ax.imshow(image_mosaic(split.images[i, :drawings], rows, cols), cmap=IMAGE_CMAP, vmin=0, vmax=1)
        ax.set_title(f"{name.rsplit('/', 1)[1][3:].lstrip('0') or '0'}° (class {i})", fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"{short_class_name(character)}: 4 rotations = 4 classes", fontsize=11)
    return fig


def task_structure(meta_train, meta_test, *, n_train: int = 2, n_test: int = 1, max_ways: int = 5,
                   max_shots: int = 1, max_queries: int = 2, train_label: str = "meta-train",
                   test_label: str = "meta-test", fig: Figure | None = None) -> Figure:
    """The task-structure diagram, drawn from real episodes.

    ``meta_train`` and ``meta_test`` are ``TaskBatch``-es of classification episodes (from samplers on
    disjoint class splits). Each of the first ``n_train`` / ``n_test`` tasks is drawn as one row: its
    support set (``N`` columns of classes x ``K`` shots, labels underneath) and its query set (same
    classes, ``Q`` queries each, labels unknown to the learner). One axes; two images per task.
    """
    for b, what in ((meta_train, "meta_train"), (meta_test, "meta_test")):
        if not _is_classification(b):
            raise ValueError(f"{what} must be a TaskBatch of image episodes")
    ways_all = int(to_numpy(meta_train.support_y[0]).max()) + 1
    shots_all = int(meta_train.support_y.shape[1]) // ways_all
    queries_all = int(meta_train.query_y.shape[1]) // ways_all
    ways, shots, queries = min(ways_all, max_ways), min(shots_all, max_shots), min(queries_all, max_queries)

    gap, box_pad = 0.12, 0.25
    sup_w = ways * (1 + gap) - gap
    label_w = 1.6
    x_sup = label_w
    x_qry = x_sup + sup_w + 2 * box_pad + 0.8
    total_w = x_qry + sup_w + box_pad + 0.3
    row_h = max(shots, queries) * (1 + gap) - gap + 2 * box_pad + 1.3
    section_gap = 1.0
    rows = [(train_label, meta_train, t) for t in range(min(n_train, len(meta_train)))]
    rows += [(test_label, meta_test, t) for t in range(min(n_test, len(meta_test)))]
    total_h = 2 * section_gap + row_h * len(rows) + 1.8

    if fig is None:
        fig = plt.figure(figsize=(0.5 * (total_w + 0.2), 0.5 * (total_h + 0.2)))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(-0.2, total_w)
    ax.set_ylim(total_h, -0.2)
    ax.set_aspect("equal")
    ax.set_axis_off()

    def mosaic(x, y, per_class):
        imgs = _label_images(x, y, ways, per_class)  # [ways, per_class, H, W] -> columns = classes
        return image_mosaic(imgs.transpose(1, 0, 2, 3).reshape(-1, *imgs.shape[-2:]), per_class, ways, pad=4)

    y = 0.3
    sections = {train_label: (SUPPORT_COLOR, "#eef3fa"), test_label: ("#2ca02c", "#eef7ee")}
    current = None
    section_top = {}
    for label, batch, t in rows:
        if label != current:
            if current is not None:
                y += section_gap * 0.6
            current = label
            section_top[label] = y
            n_tasks_text = "tasks from disjoint classes" if label == test_label else "tasks"
            ax.text(0.0, y + 0.45, f"{label} {n_tasks_text}", fontsize=12, fontweight="bold",
                    color=sections[label][0], va="center")
            y += section_gap
        # task label
        ax.text(label_w - 0.3, y + row_h / 2 - 0.5, f"task {t + 1}", fontsize=10, ha="right", va="center",
                rotation=90)
        # support set
        sh = shots * (1 + gap) - gap
        qh = queries * (1 + gap) - gap
        top = y + 0.5
        ax.imshow(mosaic(batch.support_x[t], batch.support_y[t], shots), cmap=IMAGE_CMAP, vmin=0, vmax=1,
                  extent=(x_sup, x_sup + sup_w, top + sh, top), interpolation="nearest")
        ax.imshow(mosaic(batch.query_x[t], batch.query_y[t], queries), cmap=IMAGE_CMAP, vmin=0, vmax=1,
                  extent=(x_qry, x_qry + sup_w, top + qh, top), interpolation="nearest")
        for x0, hgt, color, name in ((x_sup, sh, SUPPORT_COLOR, "support set $\\mathcal{D}^{tr}$"),
                                     (x_qry, qh, QUERY_COLOR, "query set $\\mathcal{D}^{ts}$")):
            ax.add_patch(FancyBboxPatch((x0 - box_pad, top - box_pad), sup_w + 2 * box_pad, hgt + 2 * box_pad,
                                        boxstyle="round,pad=0.02,rounding_size=0.2", fill=False,
                                        edgecolor=color, linewidth=2))
            ax.text(x0 + sup_w / 2, top - box_pad - 0.15, name, ha="center", va="bottom", fontsize=9, color=color)
        for c in range(ways):
            cx = c * (1 + gap) + 0.5
            ax.text(x_sup + cx, top + sh + box_pad + 0.1, str(c), ha="center", va="top", fontsize=9)
            ax.text(x_qry + cx, top + qh + box_pad + 0.1, "?" if label == test_label else str(c), ha="center",
                    va="top", fontsize=9, color="0.35")
        ax.annotate("", xy=(x_qry - box_pad - 0.1, top + sh / 2), xytext=(x_sup + sup_w + box_pad + 0.1, top + sh / 2),
                    arrowprops={"arrowstyle": "->", "color": "0.4", "lw": 1.2})
        y += row_h
    # section backgrounds
    labels_in_order = list(dict.fromkeys(r[0] for r in rows))
    for i, label in enumerate(labels_in_order):
        y0 = section_top[label]
        y1 = section_top[labels_in_order[i + 1]] - 0.3 if i + 1 < len(labels_in_order) else y - 0.2
        ax.add_patch(FancyBboxPatch((-0.1, y0), total_w - 0.1, y1 - y0, boxstyle="round,pad=0.02,rounding_size=0.3",
                                    facecolor=sections[label][1], edgecolor="none", zorder=-1))
        if i == 0 and len(meta_train) > n_train:
            ax.text(total_w / 2, y1 - 0.25, "⋮", ha="center", va="center", fontsize=14, color="0.4")
    ax.text(total_w / 2, y + 0.35,
            f"{ways_all}-way {shots_all}-shot: each task has N = {ways_all} classes with K = {shots_all} labelled "
            f"example{'s' if shots_all > 1 else ''} each; {queries_all} quer{'ies' if queries_all > 1 else 'y'} "
            "per class to score it", ha="center", va="top", fontsize=9)
    return fig


# ----------------------------------------------------------------------------------------- sinusoids

def _curve(a: Any) -> np.ndarray:
    """``[B, P, 1]`` / ``[B, P]`` / ``[P]`` -> ``[B, P]``."""
    a = to_numpy(a).astype(np.float64)
    if a.ndim >= 2 and a.shape[-1] == 1:
        a = a[..., 0]
    return a.reshape(1, -1) if a.ndim == 1 else a


def sinusoid_family(x: Any, y: Any, *, support_x: Any = None, support_y: Any = None, max_tasks: int = 8,
                    ax: plt.Axes | None = None, title: str | None = None) -> Figure:
    """Draw the true functions of a few sinusoid tasks (``x, y`` ``[B, P(, 1)]``, e.g. from
    ``SinusoidTasks.true_curve``) with their support points: one line per task."""
    xs, ys = _curve(x), _curve(y)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.2), layout="constrained")
    colors = plt.get_cmap("tab10")
    n = min(len(ys), max_tasks)
    for i in range(n):
        ax.plot(xs[i % len(xs)], ys[i], color=colors(i % 10), lw=1.5)
        if support_x is not None and support_y is not None:
            ax.scatter(_curve(support_x)[i], _curve(support_y)[i], color=colors(i % 10), s=18, zorder=3)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title or f"{n} sinusoid tasks" + (" and their support points" if support_x is not None else ""))
    return ax.figure


def adapted_predictions(learner, batch, x: Any, steps: Sequence[int] = (0, 1, 10)) -> dict[int, np.ndarray]:
    """Predictions ``{steps: [B, P]}`` of ``learner`` on inputs ``x`` ``[P, 1]`` (or ``[B, P, 1]``) after
    adapting to each task of ``batch`` (its support set) for each number of steps, with the learner's
    own inner loop (``learner.adapt``)."""
    import torch

    from .inner import forward

    xt = torch.as_tensor(to_numpy(x), dtype=batch.support_x.dtype, device=batch.support_x.device)
    if xt.ndim == 1:
        xt = xt.unsqueeze(-1)
    out = {}
    for s in steps:
        params = learner.adapt(batch, steps=s)
        preds = []
        with torch.no_grad():
            for i in range(len(batch)):
                xi = xt[i] if xt.ndim == 3 else xt
                preds.append(forward(learner.model, {k: v[i] for k, v in params.items()}, xi))
        out[int(s)] = _curve(torch.stack(preds))
    return out


def sinusoid_fits(x: Any, y_true: Any, support_x: Any, support_y: Any,
                  predictions: Mapping[str, Mapping[Any, Any]], *, max_tasks: int = 4,
                  ylim: tuple[float, float] | None = (-6, 6), fig: Figure | None = None) -> Figure:
    """Fits of models to new sinusoid tasks: one row per model, one column per task.

    ``x``/``y_true`` ``[B, P(, 1)]`` the true functions (x may be ``[P]``), ``support_x/y`` ``[B, K(, 1)]``,
    ``predictions`` ``{model: {curve label (e.g. steps): [B, P]}}`` (e.g. from :func:`adapted_predictions`).
    Each axes has the true function, one line per curve, and the support points.
    """
    xs, yt, sx, sy = _curve(x), _curve(y_true), _curve(support_x), _curve(support_y)
    n = min(len(yt), max_tasks)
    nrows = len(predictions)
    if fig is None:
        fig = plt.figure(figsize=(3.0 * n + 0.6, 2.5 * nrows + 0.6))
    axes = np.atleast_2d(fig.subplots(nrows, n, sharex=True, sharey=True, squeeze=False))
    for r, (model, curves) in enumerate(predictions.items()):
        m = len(curves)
        shades = plt.get_cmap("Greens" if r % 2 else "Blues")(np.linspace(0.35, 0.95, max(m, 1)))
        for c in range(n):
            ax = axes[r, c]
            ax.plot(xs[c % len(xs)], yt[c], color="#d62728", lw=2, label="true function")
            for j, (label, pred) in enumerate(curves.items()):
                p = _curve(pred)
                name = f"{label} step{'s' if label != 1 else ''}" if isinstance(label, (int, np.integer)) else str(label)
                if isinstance(label, (int, np.integer)) and label == 0:
                    name = "pre-update"
                ax.plot(xs[c % len(xs)], p[c], color=shades[j], lw=1.6, ls="--" if j == 0 else "-", label=name)
            ax.scatter(sx[c], sy[c], marker="^", color="#9467bd", s=36, zorder=4, label="support points")
            if ylim is not None:
                ax.set_ylim(*ylim)
            if r == 0:
                ax.set_title(f"task {c + 1}, K = {sx.shape[1]}", fontsize=10)
            if c == 0:
                ax.set_ylabel(model)
        axes[r, -1].legend(fontsize=7, loc="upper right", framealpha=0.8)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------- curves, results

def mean_ci(scores: Any, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the normal-approximation 95% interval along ``axis``."""
    a = to_numpy(scores).astype(np.float64)
    n = a.shape[axis]
    mean = a.mean(axis)
    ci = Z95 * a.std(axis, ddof=1) / math.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
    return mean, ci


def _is_curve_map(m: Mapping) -> bool:
    return all(not isinstance(v, Mapping) for v in m.values())


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
            mean, ci = mean_ci(scores)
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
    axes[0].set_ylabel(f"{metric} (mean, 95% CI)")
    fig.tight_layout()
    return fig


def _is_curve_map_of_numbers(m: Mapping) -> bool:
    """True for ``{label: {step: number}}`` (as opposed to ``{panel: {label: {step: number}}}``)."""
    for v in m.values():
        if not isinstance(v, Mapping):
            return False
        return all(not isinstance(w, Mapping) for w in v.values())
    return True


def training_history(history: pd.DataFrame | Mapping[str, pd.DataFrame], *, metrics: Sequence[str] | None = None,
                     x: str = "step", logy: bool = False, fig: Figure | None = None) -> Figure:
    """Curves of a ``meta_train`` history (columns ``step``, ``train_*``, ``val_*``, ``time_s``).

    ``history`` is one DataFrame or ``{run name: DataFrame}`` to compare runs. One axes per metric
    (default: every ``train_*``/``val_*`` column except ``val_ci95``, and ``train_loss`` when it
    equals another train column, as for regression); ``val_*`` gets its 95% CI band when
    ``val_ci95`` is present. ``x`` is ``"step"`` or ``"time_s"``.
    """
    runs = {"": history} if isinstance(history, pd.DataFrame) else dict(history)
    if metrics is None:
        cols: list[str] = []
        for df in runs.values():
            for c in df.columns:
                if c.startswith(("train_", "val_")) and c != "val_ci95" and c not in cols:
                    cols.append(c)
        if "train_loss" in cols:
            others = [c for c in cols if c.startswith("train_") and c != "train_loss"]
            if any(all(np.allclose(df["train_loss"], df[o]) for df in runs.values()
                       if "train_loss" in df and o in df) for o in others):
                cols.remove("train_loss")
        metrics = cols
    if not metrics:
        raise ValueError("no train_*/val_* columns to plot")
    if fig is None:
        fig = plt.figure(figsize=(4.0 * len(metrics) + 0.4, 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)[0])
    colors = plt.get_cmap("tab10")
    for ax, m in zip(axes, metrics):
        for i, (name, df) in enumerate(runs.items()):
            if m not in df or df[m].isna().all():
                continue
            d = df[[x, m] + (["val_ci95"] if m.startswith("val_") and "val_ci95" in df else [])].dropna()
            ax.plot(d[x], d[m], marker="o", ms=3, color=colors(i), label=name or None)
            if "val_ci95" in d and m.startswith("val_"):
                ax.fill_between(d[x], d[m] - d["val_ci95"], d[m] + d["val_ci95"], color=colors(i), alpha=0.2, lw=0)
        ax.set_title(m.replace("_", " "), fontsize=10)
        ax.set_xlabel("meta-iteration" if x == "step" else "training time (s)")
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if len(runs) > 1 or next(iter(runs)):
        axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


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
                percent: bool | None = None, ax: plt.Axes | None = None, title: str | None = None) -> Figure:
    """Bars with 95% CI error bars; ``published`` values (same keys) as hatched bars next to them.

    ``results``: ``{series: value}`` or ``{group: {series: value}}`` (groups on the x axis, one bar per
    series); a value is an ``EvalResult``, a ``(mean, ci95)`` pair or a number. Accuracies
    (``EvalResult.metric == "accuracy"`` or ``percent=True``) are shown in percent.
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
        _, ax = plt.subplots(figsize=(max(4.0, 1.2 + 0.5 * len(groups) * len(bars)), 3.4), layout="constrained")
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
    ax.set_ylabel(f"{metric}{' (%)' if percent else ''}, 95% CI")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return ax.figure

"""Figures of classification episodes: image mosaics, one episode, a character's rotations, the task structure.

Images ``[..., 1, H, W]`` or ``[..., H, W]`` (uint8 or float) are drawn with the ``gray_r`` colour map:
Omniglot's bright strokes on a dark background become dark strokes on white paper.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from ..data import ClassSplit
from ..tasks import TaskBatch
from .common import IMAGE_CMAP, QUERY_COLOR, SUPPORT_COLOR, plural, to_numpy

__all__ = ["image_mosaic", "short_class_name", "episode_grid", "character_rotations", "task_structure", "image_grid"]


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


def _is_classification(batch: TaskBatch) -> bool:
    return batch.support_x.ndim >= 4


def _label_images(x: Any, y: Any, ways: int, per_class: int) -> np.ndarray:
    """Images ``[ways, per_class, H, W]`` grouped by label (first ``per_class`` of each label)."""
    imgs, labels = _images(x), to_numpy(y)
    out = np.zeros((ways, per_class) + imgs.shape[-2:], dtype=np.float32)
    for c in range(ways):
        idx = np.flatnonzero(labels == c)[:per_class]
        out[c, : len(idx)] = imgs[idx]
    return out


def episode_grid(batch: TaskBatch, task: int = 0, *, class_names: Sequence[str] | None = None, max_ways: int = 10,
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
    fig.suptitle(title or f"{ways_all}-way {shots_all}-shot episode ({plural(queries_all, 'query', 'queries')} per "
                 "class" + ("" if ways == ways_all else f", first {ways} classes shown") + ")", fontsize=11)
    return fig


def character_rotations(split: ClassSplit, character: str | int, *, drawings: int = 4,
                        fig: Figure | None = None) -> Figure:
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


def task_structure(meta_train: TaskBatch, meta_test: TaskBatch, *, n_train: int = 2, n_test: int = 1, max_ways: int = 5,
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

    def mosaic(x: Any, y: Any, per_class: int) -> np.ndarray:
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
            f"{ways_all}-way {shots_all}-shot: each task has N = {ways_all} classes with K = "
            f"{plural(shots_all, 'labelled example')} each; {plural(queries_all, 'query', 'queries')} "
            "per class to score it", ha="center", va="top", fontsize=9)
    return fig


def _displayable(image: Any) -> np.ndarray:
    """One image ``[C, H, W]`` (uint8, floats in [0, 1], or normalised floats) as ``[H, W]`` or ``[H, W, 3]`` in [0, 1]."""
    raw = to_numpy(image)
    a = raw.astype(np.float32)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    if np.issubdtype(raw.dtype, np.integer):  # stored pixels, 0..255
        return a / 255.0
    if a.min(initial=0.0) < 0 or a.max(initial=0.0) > 1:  # normalised model inputs: stretched for display
        return (a - a.min()) / max(float(a.max() - a.min()), 1e-8)
    return a


def image_grid(images: Any, titles: Sequence[str] | None = None, *, ncols: int = 8, title: str | None = None,
               colors: Sequence[str] | None = None, size: float = 1.1) -> Figure:
    """Images ``[n, C, H, W]`` (grey or RGB; uint8, [0, 1] or normalised floats) in a grid, each with its title
    (e.g. a class, or a prediction) in its colour: a user's own images as they are, or as the model sees them."""
    imgs = [_displayable(x) for x in images]
    n = len(imgs)
    rows = max(1, -(-n // ncols))
    cols = min(ncols, max(n, 1))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + (0.4 if title else 0.1)), squeeze=False,
                             layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(imgs[i], cmap="gray" if imgs[i].ndim == 2 else None, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(titles[i], fontsize=7, **({} if colors is None else {"color": colors[i]}))
    if title:
        fig.suptitle(title, fontsize=10)
    return fig

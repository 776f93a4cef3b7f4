"""Helpers and colours shared by the figure modules: array conversion, labels, means with intervals."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..evaluate import confidence_interval

__all__ = ["IMAGE_CMAP", "SUPPORT_COLOR", "QUERY_COLOR", "TRUE_COLOR", "POINT_COLOR", "to_numpy", "as_curves",
           "plural", "steps_label", "column_label", "mean_and_ci"]

IMAGE_CMAP = "gray_r"  # Omniglot strokes are stored bright on dark: drawn dark on white paper
SUPPORT_COLOR = "#1f77b4"
QUERY_COLOR = "#ff7f0e"
TRUE_COLOR = "#d62728"  # a task's true function
POINT_COLOR = "#9467bd"  # a regression task's support points

# Last word of a column name read as its unit: ``time_s`` -> "time (s)", ``saved_MB`` -> "saved (MB)".
UNITS = {"s": "s", "ms": "ms", "us": "µs", "min": "min", "h": "h", "KB": "KB", "MB": "MB", "GB": "GB",
         "KiB": "KiB", "MiB": "MiB", "GiB": "GiB", "pct": "%", "percent": "%"}


def to_numpy(x: Any) -> np.ndarray:
    """A tensor (any device, with or without grad), array or list as a NumPy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def as_curves(a: Any) -> np.ndarray:
    """Curves ``[B, P, 1]`` / ``[B, P]`` / ``[P]`` as float ``[B, P]``."""
    a = to_numpy(a).astype(np.float64)
    if a.ndim >= 2 and a.shape[-1] == 1:
        a = a[..., 0]
    return a.reshape(1, -1) if a.ndim == 1 else a


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 step"``, ``"0 steps"``, ``"10 steps"``; ``many`` is an irregular plural (``"query", "queries"``)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def steps_label(steps: Any) -> str:
    """Legend label of a curve after ``steps`` adaptation steps: ``"pre-update"``, ``"1 step"``, ``"10 steps"``;
    a label that is not an integer is kept as text."""
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)):
        return str(steps)
    return "pre-update" if steps == 0 else plural(int(steps), "step")


def column_label(name: str) -> str:
    """A column name as axis-label words: underscores become spaces and a unit suffix goes into parentheses
    (``"saved_MB"`` -> ``"saved (MB)"``, ``"time_s"`` -> ``"time (s)"``, ``"val_mse"`` -> ``"val mse"``)."""
    words = [w for w in str(name).split("_") if w]
    unit = UNITS.get(words[-1]) if len(words) > 1 else None
    if unit is not None:
        words = words[:-1]
    text = " ".join(words)
    return f"{text} ({unit})" if unit else text


def mean_and_ci(scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the 95% interval over the first axis (``metalib.evaluate.confidence_interval``)."""
    mean, half = confidence_interval(to_numpy(scores), dim=0)
    return to_numpy(mean), to_numpy(half)

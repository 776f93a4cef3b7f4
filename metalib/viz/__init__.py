"""Figures shared by the notebooks; they draw what they are given and never train, adapt or evaluate.

=========================  =================  ===========================================================
``image_mosaic``           ``episodes``       images tiled into one array
``short_class_name``       ``episodes``       a class name short enough for a title
``episode_grid``           ``episodes``       one episode: support set and query set, one row per class
``character_rotations``    ``episodes``       a character in its four rotations (0, 90, 180, 270 degrees)
``task_structure``         ``episodes``       meta-train / meta-test task sets, each task with its support and query set
``image_grid``             ``episodes``       images (grey or RGB, raw or normalised) in a grid, each with its title
``sinusoid_family``        ``sinusoids``      a few tasks of the sinusoid family with their support points
``sinusoid_fits``          ``sinusoids``      model fits to new tasks after 0, 1, ... adaptation steps
``draw_fits``              ``sinusoids``      one regression task and predictions, into an axes
``adaptation_curves``      ``curves``         score vs. adaptation steps, mean and 95% CI band over test tasks
``training_history``       ``curves``         train_* / val_* columns of a ``meta_train`` history against step or time
``accuracy_against_time``  ``curves``         test accuracy (95% CI) against training time, e.g. of the shipped models
``results_table``          ``results``        means, 95% CIs (and published numbers) as a DataFrame
``result_bars``            ``results``        the same as bars with 95% CI error bars, published numbers hatched
``bilevel_picture``        ``bilevel``        MAML's two levels: the path of theta with its meta-gradients, tasks' steps
``column_label``           ``common``         a column name as label words: ``"saved_MB"`` -> ``"saved (MB)"``
=========================  =================  ===========================================================

Every figure function returns the matplotlib ``Figure`` (those that take ``ax=`` draw into that axes).
Inputs may be torch tensors, NumPy arrays or lists. What to draw comes from :mod:`metalib.evaluate`
(``adapted_predictions``, ``adaptation_curve``, ``evaluate``, ``confidence_interval``).

The interactive views are in :mod:`metalib.viz.widgets` (``from metalib.viz import widgets``), which needs
ipywidgets. matplotlib, seaborn and ipywidgets are the package's ``notebooks`` extra:
``pip install 'metalib[notebooks]'``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

NOTEBOOK_EXTRAS = "pip install 'metalib[notebooks]' (or: pip install matplotlib seaborn ipywidgets)"


def require_extra(module: str) -> ModuleType:
    """Import ``module``, one of the notebook extras, or raise an ImportError that says how to install them."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"metalib.viz needs {module}, which is not installed: {NOTEBOOK_EXTRAS}") from err


require_extra("matplotlib")

from .bilevel import bilevel_picture  # noqa: E402
from .common import column_label  # noqa: E402
from .curves import accuracy_against_time, adaptation_curves, training_history  # noqa: E402
from .episodes import (character_rotations, episode_grid, image_grid, image_mosaic, short_class_name,  # noqa: E402
                       task_structure)
from .results import result_bars, results_table  # noqa: E402
from .sinusoids import draw_fits, sinusoid_family, sinusoid_fits  # noqa: E402

__all__ = ["image_mosaic", "short_class_name", "episode_grid", "character_rotations", "task_structure", "image_grid",
           "sinusoid_family", "sinusoid_fits", "draw_fits", "adaptation_curves", "training_history", "accuracy_against_time",
           "results_table", "result_bars", "bilevel_picture", "column_label", "require_extra", "NOTEBOOK_EXTRAS"]

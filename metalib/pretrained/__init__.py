"""Trained meta-parameters shipped with metalib, each with a manifest of how it was made and what it scores.

    from metalib import load_pretrained
    learner = load_pretrained("maml-omniglot-5w1s")       # a MetaLearner, ready for evaluate()
    print(manifest("maml-omniglot-5w1s")["evaluation"])  # 600 test tasks, mean and 95% interval

Each model is ``<name>.pt`` (the learner's ``state_dict``, float32, less what only training needs:
:meth:`~metalib.algorithms.MetaLearner.zoo_state`) and ``<name>.json``; a manifest with ``weights`` evaluates
another model's file its own way (the transfer baselines share one pre-trained embedding). The manifest holds the
recipe and the exact command that trained it, the git commit, machine, torch version, wall-clock and CPU time, the
training history, an accuracy-against-time curve, the evaluation on 600 fixed test tasks of the Vinyals test split
(test steps and BatchNorm mode included), and a smaller check set that ``tests/test_pretrained.py``
re-evaluates. Models are made by ``python -m metalib.pretrained.export`` from a ``train_cli --recipe`` run.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..algorithms import MetaLearner, build_learner
from ..checkpoints import load_checkpoint, restore
from ..data import OMNIGLOT_PREPROCESS, ImagePreprocess
from ..errors import ArgumentError, UserError
from ..recipes import Recipe
from ..utils import resolve_device

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["available", "weights_file", "manifest", "migrate_manifest", "manifest_recipe", "load_pretrained", "pretrained_preprocess", "results", "curves",
           "file_sha256", "ZooError", "ZOO"]

ZOO = Path(str(resources.files(__name__)))
_FIX = "restore it with `git checkout metalib/pretrained/` or reinstall metalib"


class ZooError(UserError, ValueError):
    """A shipped model whose files are missing, damaged or do not belong together; the message names the file."""


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.stem for p in ZOO.glob("*.json") if weights_file(p.stem).exists())


def weights_file(name: str) -> Path:
    """The model file of shipped model ``name``: ``<name>.pt``, or that of the recipe whose weights it evaluates
    (a recipe's ``weights``: the transfer baselines share one pre-trained embedding)."""
    try:
        shared = json.loads((ZOO / f"{name}.json").read_text(encoding="utf-8")).get("weights")
    except (OSError, ValueError, AttributeError):
        shared = None
    return ZOO / f"{shared or name}.pt"


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex): what a manifest records of its model file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest(name: str) -> dict:
    """The manifest of a shipped model (how it was made, what it scores)."""
    path = ZOO / f"{name}.json"
    if not path.exists():
        raise ZooError(f"no pretrained model {name!r}; available: {available()}")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ZooError(f"manifest {path} is damaged ({str(exc).splitlines()[0]}); {_FIX}") from None
    if not isinstance(info, dict):
        raise ZooError(f"manifest {path} holds a {type(info).__name__}, not a manifest (a JSON object); {_FIX}")
    missing = [k for k in ("recipe", "evaluation", "sha256") if k not in info]
    if missing:
        raise ZooError(f"manifest {path} lacks {', '.join(missing)}; {_FIX}")
    try:
        return migrate_manifest(info)
    except (ArgumentError, KeyError, TypeError, AttributeError) as exc:
        raise ZooError(f"manifest {path} records a recipe this metalib cannot read ({exc}); {_FIX}") from None


def migrate_manifest(info: dict) -> dict:
    """The manifest in the current format, its recipe checked: one written before recipes held typed settings (its
    recipe's learner settings as flat fields, and the ``train_cli`` options that rebuilt it, ``argv``) is
    converted. A recipe that does not make a :class:`~metalib.recipes.Recipe` raises ArgumentError."""
    recipe = Recipe.from_dict(info["recipe"]).as_dict()
    return {**{k: v for k, v in info.items() if k != "argv"}, "recipe": recipe}


def manifest_recipe(name: str) -> Recipe:
    """The recipe a shipped model was trained with, as its manifest records it."""
    return Recipe.from_dict(manifest(name)["recipe"])


def pretrained_preprocess(name: str) -> ImagePreprocess:
    """How shipped model ``name`` turns an image into its input (what :func:`metalib.predict.predict` needs): the
    manifest's record, or Omniglot's preprocessing for the Omniglot models."""
    info = manifest(name)
    if "preprocess" in info:
        return ImagePreprocess.from_dict(info["preprocess"])
    recipe = Recipe.from_dict(info["recipe"])
    if recipe.dataset != "omniglot":
        raise ZooError(f"manifest of {name} does not record its image preprocessing ({recipe.dataset} model)")
    return OMNIGLOT_PREPROCESS


def load_pretrained(name: str, device: torch.device | str = "cpu") -> MetaLearner:
    """The shipped learner ``name`` on ``device``, built with the settings it was trained with. The model file must
    be the one its manifest describes (its SHA-256 is checked)."""
    info = manifest(name)
    weights = ZOO / f"{info.get('weights') or name}.pt"
    if not weights.exists():
        raise ZooError(f"model file {weights} is missing; {_FIX}")
    if file_sha256(weights) != info["sha256"]:
        raise ZooError(f"model file {weights} is not the one its manifest {ZOO / name}.json describes (SHA-256 "
                       f"differs: another model's file, or damaged); {_FIX}")
    recipe = Recipe.from_dict(info["recipe"])
    device = resolve_device(device)
    pre = pretrained_preprocess(name) if recipe.problem == "classification" else None
    learner = build_learner(recipe.algorithm, recipe.learner, problem=recipe.problem, ways=recipe.ways,
                            eval_ways=recipe.tests[0][0], hidden=recipe.hidden, seed=recipe.seed, device=device,
                            backbone=recipe.model, in_channels=pre.channels if pre else 1,
                            image_size=pre.size if pre else 28)
    state = load_checkpoint(weights, map_location=device)
    restore(weights, learner, state, f"learner ({learner.name})")
    return learner.eval()


def _variant(name: str) -> str:
    """What a recipe's name adds after its algorithm, dataset and column: "" for ``maml-omniglot-5w1s``,
    "trainval" for ``protonet-omniglot-1shot-trainval``."""
    return name.split("-", 3)[3] if name.count("-") >= 3 else ""


def results() -> pd.DataFrame:
    """One row per shipped model and test column: its variant (the recipe name's tail, e.g. "trainval"), the
    classes it trained on (vinyals train or trainval), the meta-batch, mean and 95% interval over 600 test tasks,
    test steps, BatchNorm mode, the published figure, and the training time and machine (from the manifests)."""
    import pandas as pd

    columns = ["model", "algorithm", "variant", "train_split", "meta_batch", "column", "accuracy", "ci95", "n_tasks",
               "test_steps", "batchnorm", "published", "train_min", "steps", "machine"]
    rows = []
    for name in available():
        try:
            info = manifest(name)
        except ZooError as exc:  # one damaged manifest must not hide the others
            warnings.warn(f"{exc} (left out of the results)", stacklevel=2)
            continue
        for e in info["evaluation"]:
            rows.append({"model": name, "algorithm": info["recipe"]["algorithm"], "variant": _variant(name),
                         "train_split": info["recipe"].get("train_split", "train"),
                         "meta_batch": info["recipe"]["meta_batch"],
                         "column": f"{e['ways']}-way {e['shots']}-shot", "accuracy": e["mean"], "ci95": e["ci95"],
                         "n_tasks": e["n_tasks"], "test_steps": e["test_steps"], "batchnorm": e["batchnorm"],
                         "published": e.get("published"), "train_min": (info["wall_clock_s"] or 0) / 60,
                         "steps": info["steps"], "machine": info["machine"]})
    return pd.DataFrame(rows, columns=columns)


def curves() -> dict[str, pd.DataFrame]:
    """Test accuracy against training time of every shipped model (its snapshots, ``curve.tasks`` tasks each)."""
    import pandas as pd

    out = {}
    for name in available():
        try:
            out[name] = pd.DataFrame(manifest(name)["curve"]["points"])
        except ZooError as exc:
            warnings.warn(f"{exc} (left out of the curves)", stacklevel=2)
    return out

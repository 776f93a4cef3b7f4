"""Trained meta-parameters shipped with metalib, each with a manifest of how it was made and what it scores.

    from metalib import load_pretrained
    learner = load_pretrained("maml-omniglot-5w1s")       # a MetaLearner, ready for evaluate()
    print(manifest("maml-omniglot-5w1s")["evaluation"])  # 600 test tasks, mean and 95% interval

Each model is ``<name>.pt`` (the learner's ``state_dict``, float32) and ``<name>.json``: the recipe and the
exact command that trained it, the git commit, machine, torch version, wall-clock and CPU time, the training
history, an accuracy-against-time curve, the evaluation on 600 fixed test tasks of the Vinyals test split
(test steps and BatchNorm mode included), and a smaller check set that ``tests/test_pretrained.py``
re-evaluates. Models are made by ``python -m metalib.pretrained.export`` from a ``train_cli --recipe`` run.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..algorithms import MetaLearner
from ..utils import resolve_device

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["available", "manifest", "load_pretrained", "results", "curves", "ZOO"]

ZOO = Path(str(resources.files(__name__)))


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.stem for p in ZOO.glob("*.json") if (ZOO / f"{p.stem}.pt").exists())


def manifest(name: str) -> dict:
    """The manifest of a shipped model (how it was made, what it scores)."""
    path = ZOO / f"{name}.json"
    if not path.exists():
        raise ValueError(f"no pretrained model {name!r}; available: {available()}")
    return json.loads(path.read_text())


def load_pretrained(name: str, device: torch.device | str = "cpu") -> MetaLearner:
    """The shipped learner ``name`` on ``device``, built with the settings it was trained with."""
    from ..train_cli import build_learner, parse_args

    info = manifest(name)
    _, args = parse_args(info["argv"])
    device = resolve_device(device)
    learner = build_learner(args, device)
    state = torch.load(ZOO / f"{name}.pt", map_location=device, weights_only=True)
    learner.load_state_dict(state)
    return learner.eval()


def _variant(name: str) -> str:
    """What a recipe's name adds after its algorithm, dataset and column: "" for ``maml-omniglot-5w1s``,
    "trainval" for ``maml-omniglot-5w1s-trainval``."""
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
        info = manifest(name)
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

    return {name: pd.DataFrame(manifest(name)["curve"]["points"]) for name in available()}

"""Few-shot prediction on new images: a support set (images and their labels) and query images in, each query's label
and class probabilities out, for every classifier learner and every shipped model.

    from metalib import load_pretrained, predict, pretrained_preprocess
    learner = load_pretrained("protonet-omniglot-1shot")
    result = predict(learner, ["a.png", "b.png"], ["alpha", "beta"], ["new.png"],
                     preprocess=pretrained_preprocess("protonet-omniglot-1shot"))
    result.table()          # one row per query: its label, its probability, every class's probability

From the shell, a support folder with one sub-folder per class and a folder (or files) of queries::

    python -m metalib.predict --model protonet-omniglot-1shot --support support/ --query new/

Images are preprocessed as the learner was trained (:class:`~metalib.data.ImagePreprocess`: size, channels,
inversion, normalisation). By default each query is classified with the support set alone (``batchnorm=
"inductive"``), so a query's prediction does not depend on which other queries are predicted with it.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Hashable, Sequence

import pandas as pd
import torch
from torch import Tensor

from .algorithms import MetaLearner
from .data import ImagePreprocess, decode_image, to_model_input
from .data.base import DatasetNotFoundError, InvalidDatasetError
from .data.images import IMAGE_SUFFIXES, image_files
from .errors import ArgumentError, UserError
from .tasks import TaskBatch
from .utils import resolve_device

__all__ = ["Prediction", "predict", "predict_folders", "load_images", "folder_support", "learner_from_checkpoint",
           "main"]


@dataclass
class Prediction:
    """``labels[i]``: the predicted class of query ``i`` (named by ``queries[i]``); ``probabilities`` ``[Q, N]``:
    its probability for each of ``classes`` (the support set's labels, sorted)."""

    classes: list
    queries: list[str]
    labels: list
    probabilities: Tensor

    def table(self) -> pd.DataFrame:
        """One row per query: ``query``, ``label``, ``probability`` (of that label), then one column per class."""
        best = self.probabilities.max(1).values
        df = pd.DataFrame({"query": self.queries, "label": self.labels, "probability": best.tolist()})
        for j, c in enumerate(self.classes):
            df[f"p({c})"] = self.probabilities[:, j].tolist()
        return df


def _name(item: object, i: int) -> str:
    return str(item) if isinstance(item, (str, os.PathLike)) else f"#{i}"


def load_images(items: Sequence[object] | Tensor, preprocess: ImagePreprocess, what: str = "image") -> Tensor:
    """Model inputs ``[n, C, H, W]`` (float32, normalised) from file paths, PIL images or tensors (uint8 0..255 or
    float 0..1, ``[C, H, W]`` each or one ``[n, C, H, W]`` tensor, already of the preprocessing's size)."""
    if isinstance(items, Tensor):
        items = list(items) if items.dim() == 4 else [items]
    if len(items) == 0:
        raise ArgumentError(f"no {what}s given")
    shape = (preprocess.channels, preprocess.size, preprocess.size)
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Tensor):
            if tuple(item.shape) != shape:
                raise ArgumentError(f"{what} {i} is a tensor of shape {tuple(item.shape)}, but this model takes "
                                    f"{list(shape)}: pass a file path or a PIL image to have it resized")
            out.append(item.detach().cpu())
        else:
            if isinstance(item, (str, os.PathLike)) and not Path(item).is_file():
                raise DatasetNotFoundError(f"{what} {item} does not exist")
            out.append(torch.from_numpy(decode_image(item, preprocess)))
    return torch.stack([to_model_input(x, preprocess) for x in out])


def predict(learner: MetaLearner, support: Sequence[object] | Tensor, support_labels: Sequence[Hashable],
            query: Sequence[object] | Tensor, *, preprocess: ImagePreprocess, steps: int | None = None,
            batchnorm: str = "inductive", device: torch.device | str | None = None) -> Prediction:
    """Adapt ``learner`` to the support set (or build its prototypes) and classify every query image.

    ``support_labels`` may be any labels (strings, ints); classes are their sorted unique values. ``steps``:
    test-time adaptation steps (the learner's own by default). ``batchnorm``: ``"inductive"`` (each query with the
    support set alone) or ``"transductive"`` (the queries through the network together, as evaluation does)."""
    if learner.problem.name != "classification":
        raise ArgumentError(f"{learner.name} was trained for {learner.problem.name}: predict classifies images")
    labels = list(support_labels)
    if len(labels) != (1 if isinstance(support, Tensor) and support.dim() == 3 else len(support)):
        raise ArgumentError(f"{len(labels)} support labels for {len(support)} support images: give one label per image")
    classes = sorted(set(labels), key=lambda c: (str(type(c)), c))
    if len(classes) < 2:
        raise ArgumentError(f"the support set has {len(classes)} class: give images of at least 2 classes")
    _check_ways(learner, len(classes))
    device = resolve_device(device) if device is not None else next(learner.parameters()).device
    index = {c: j for j, c in enumerate(classes)}
    y = torch.tensor([index[c] for c in labels])
    order = torch.argsort(y, stable=True)  # support grouped by class, as episodes are
    xs = load_images(support, preprocess, "support image")[order]
    xq = load_images(query, preprocess, "query image")
    batch = TaskBatch(xs.unsqueeze(0).to(device), y[order].unsqueeze(0).to(device), xq.unsqueeze(0).to(device),
                      torch.zeros(1, len(xq), dtype=torch.long, device=device), {})
    was_training = learner.training
    learner.eval()
    try:
        logits = learner.query_outputs(batch, steps=steps, batchnorm=batchnorm)[0].float()
    finally:
        learner.train(was_training)
    probs = torch.softmax(logits, dim=-1).cpu()
    names = [_name(q, i) for i, q in enumerate(query)] if not isinstance(query, Tensor) else \
        [f"#{i}" for i in range(len(xq))]
    return Prediction(classes, names, [classes[j] for j in probs.argmax(1).tolist()], probs)


def _check_ways(learner: MetaLearner, ways: int) -> None:
    """A learner with a fixed linear head classifies exactly as many classes as the head has outputs."""
    model = getattr(learner, "model", None)
    head = dict(model.named_parameters()).get("head.weight") if model is not None else None
    if head is not None and head.shape[0] != ways:
        raise ArgumentError(f"{learner.name}'s head has {head.shape[0]} outputs, so it classifies {head.shape[0]} "
                            f"classes at a time; the support set has {ways}: give {head.shape[0]} classes")


def folder_support(folder: str | os.PathLike[str]) -> tuple[list[Path], list[str]]:
    """Support images and labels from ``folder/<class>/<image>`` (one line naming the problem if it has none)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DatasetNotFoundError(f"support folder {folder} does not exist: give a folder with one sub-folder per class")
    images, labels = [], []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in image_files(sub):
            images.append(f)
            labels.append(sub.name)
    if not images:
        raise InvalidDatasetError(f"support folder {folder} has no class sub-folders with images: put each class's "
                                  f"images in {folder}/<class name>/")
    return images, labels


def _queries(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InvalidDatasetError(f"query folder {p} has no images")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise DatasetNotFoundError(f"query {p} does not exist")
    return out


def predict_folders(learner: MetaLearner, support: str | os.PathLike[str], query: Sequence[str | os.PathLike[str]],
                    *, preprocess: ImagePreprocess, **kwargs) -> Prediction:
    """:func:`predict` with the support set from a folder of class sub-folders and queries from folders or files."""
    images, labels = folder_support(support)
    return predict(learner, images, labels, _queries(query), preprocess=preprocess, **kwargs)


def learner_from_checkpoint(path: str | os.PathLike[str],
                            device: torch.device | str = "cpu") -> tuple[MetaLearner, ImagePreprocess]:
    """The learner a ``train_cli`` checkpoint holds, rebuilt from the run settings it records, and the image
    preprocessing it was trained with."""
    from .algorithms import build_learner, learner_spec
    from .checkpoints import CheckpointError, load_checkpoint, require_keys, restore
    from .data import OMNIGLOT_PREPROCESS

    state = load_checkpoint(path)
    require_keys(path, state, ("learner", "run_settings"), "a train_cli checkpoint")
    run = state["run_settings"] or {}
    if "algorithm" not in run:
        raise CheckpointError(f"checkpoint {path} records no algorithm: it was not written by python -m "
                              "metalib.train_cli; load it with the learner you trained")
    problem = "regression" if run.get("dataset") == "sinusoid" else "classification"
    if "_preprocess" in run:
        pre = ImagePreprocess.from_dict(run["_preprocess"])
    elif run.get("dataset") == "omniglot":
        pre = OMNIGLOT_PREPROCESS
    else:
        raise CheckpointError(f"checkpoint {path} does not record how its images were preprocessed")
    cls = learner_spec(run["algorithm"]).settings
    settings = cls.resolve({k: run[k] for k in cls.options() if run.get(k) is not None}, problem)
    device = resolve_device(device)
    learner = build_learner(run["algorithm"], settings, problem=problem, ways=run.get("ways") or 5,
                            eval_ways=run.get("_eval_ways"), hidden=run.get("hidden", 64), seed=run.get("seed", 0), device=device,
                            backbone=run.get("model", "conv4"), in_channels=pre.channels, image_size=pre.size)
    restore(path, learner, state["learner"], f"learner ({learner.name})")
    return learner.eval(), pre


def _learner(a: argparse.Namespace) -> tuple[MetaLearner, ImagePreprocess]:
    if a.model is not None:
        from .pretrained import load_pretrained, pretrained_preprocess

        return load_pretrained(a.model, a.device), pretrained_preprocess(a.model)
    return learner_from_checkpoint(a.checkpoint, a.device)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m metalib.predict``: print (and optionally write as CSV) a row per query image; a user's mistake
    is one line on stderr and exit status 2."""
    p = argparse.ArgumentParser(prog="python -m metalib.predict",
                                description="Classify new images with a shipped model or a training checkpoint, "
                                            "given a support folder with one sub-folder of images per class.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a shipped model (python -c 'import metalib; print(metalib.available())')")
    which.add_argument("--checkpoint", help="a checkpoint written by python -m metalib.train_cli")
    p.add_argument("--support", required=True, help="folder with one sub-folder of images per class")
    p.add_argument("--query", required=True, nargs="+", help="image files or folders of images to classify")
    p.add_argument("--steps", type=int, default=None, help="test-time adaptation steps (default: the learner's)")
    p.add_argument("--batchnorm", choices=["inductive", "transductive"], default="inductive",
                   help="each query with the support set alone (inductive), or all queries together")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")
    a = p.parse_args(argv)
    try:
        learner, pre = _learner(a)
        result = predict_folders(learner, a.support, a.query, preprocess=pre, steps=a.steps, batchnorm=a.batchnorm)
    except UserError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    table = result.table()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if a.csv:
        from .outputs import write_atomic

        write_atomic(a.csv, table.to_csv(index=False), "prediction CSV")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""mini-ImageNet (Vinyals et al. 2016; the Ravi & Larochelle 2017 split: 64/16/20 ImageNet classes x 600 images).

It has no canonical download (the images are ImageNet's, under its terms), so it is read from a local copy in
either of the two layouts in use:

* the pickle caches of Ren et al. 2018 that learn2learn mirrors: ``mini-imagenet-cache-train.pkl``,
  ``-validation.pkl`` (or ``-val.pkl``) and ``-test.pkl``, each a dict with ``"image_data"`` (uint8
  ``[N, 84, 84, 3]`` RGB) and ``"class_dict"`` (wnid -> list of row indices);
* Ravi & Larochelle's csv files ``train.csv``, ``val.csv``, ``test.csv`` (header ``filename,label``, rows like
  ``n0153282900000005.jpg,n01532829``) next to an ``images/`` folder of those files (any size; resized here),
  or the ``train/<wnid>/*.jpg`` (``val``, ``test``) folders that MAML's and mini-imagenet-tools' scripts write.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import FewShotDataset, ImagePreprocess, InvalidDatasetError, safe_unpickle
from .images import image_files, resize_images

__all__ = ["mini_imagenet_dataset", "PICKLE_NAMES", "FETCH_HINT"]

PICKLE_NAMES = {"train": ("mini-imagenet-cache-train.pkl",),
                "val": ("mini-imagenet-cache-validation.pkl", "mini-imagenet-cache-val.pkl"),
                "test": ("mini-imagenet-cache-test.pkl",)}
FETCH_HINT = ("mini-ImageNet has no canonical download: put learn2learn's mini-imagenet-cache-{train,validation,test}"
              ".pkl, or Ravi & Larochelle's train.csv, val.csv, test.csv with an images/ folder (build it from "
              "ILSVRC2012 with github.com/yaoyao-liu/mini-imagenet-tools), in a folder named mini-imagenet")


def mini_imagenet_dataset(folder: Path, published: dict[str, list[str]], image_size: int = 84,
                          mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                          cache_dir: Path | None = None) -> FewShotDataset:
    """mini-ImageNet from ``folder`` (either layout), checked against the ``published`` split's wnids."""
    from .folder import cached_images, dataset_splits

    pre = ImagePreprocess(image_size, 3, resample="lanczos")
    pickles = {s: next((folder / n for n in names if (folder / n).is_file()), None) for s, names in PICKLE_NAMES.items()}
    if all(pickles.values()):
        images, names, counts = _from_pickles(pickles, published, pre)
    else:
        files = _csv_files(folder, published) if (folder / "train.csv").is_file() else _split_folders(folder, published)
        images, counts = cached_images(folder, files, pre, cache_dir)
        names = sorted(files)
    assignment = {s: list(v) for s, v in published.items()}
    return dataset_splits("mini-imagenet", str(folder), images, names, counts, assignment, pre, mean, std)


def _check(split: str, found: Sequence[str], published: dict[str, list[str]], where: str) -> None:
    if set(found) != set(published[split]):
        extra, missing = sorted(set(found) - set(published[split])), sorted(set(published[split]) - set(found))
        raise InvalidDatasetError(f"{where}: its {split} classes are not the Ravi & Larochelle split (extra {extra[:3]}, "
                                  f"missing {missing[:3]}): use the published split files")


def _from_pickles(paths: dict[str, Path], published: dict[str, list[str]],
                  pre: ImagePreprocess) -> tuple[np.ndarray, list[str], list[int]]:
    parts, names, counts = [], [], []
    for split, path in paths.items():
        try:
            d = _load_pickle(path)
        except Exception as exc:  # truncated files raise EOFError, UnpicklingError, ValueError...
            raise InvalidDatasetError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc}): download it "
                                      "again") from None
        if isinstance(d, dict) and b"image_data" in d:  # written by Python 2
            d = {k.decode(): v for k, v in d.items()}
        if not isinstance(d, dict) or "image_data" not in d or "class_dict" not in d:
            raise InvalidDatasetError(f"{path} lacks 'image_data' and 'class_dict': it is not a mini-ImageNet cache")
        data = np.asarray(d["image_data"])
        if data.dtype != np.uint8 or data.ndim != 4 or data.shape[3] != 3:
            raise InvalidDatasetError(f"{path}: image_data is {data.dtype} {data.shape}, expected uint8 [N, H, W, 3]")
        class_dict = {(k.decode() if isinstance(k, bytes) else k): np.asarray(v, dtype=np.int64)
                      for k, v in d["class_dict"].items()}
        _check(split, list(class_dict), published, str(path))
        for wnid in sorted(class_dict):
            rows = class_dict[wnid]
            if len(rows) and (rows.min() < 0 or rows.max() >= len(data)):
                raise InvalidDatasetError(f"{path}: class_dict[{wnid!r}] indexes rows outside image_data's {len(data)}")
            parts.append(resize_images(data[rows].transpose(0, 3, 1, 2), pre))
            names.append(wnid)
            counts.append(len(rows))
    order = np.argsort(names, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(counts)])
    images = np.concatenate(parts)
    images = np.concatenate([images[offsets[i]:offsets[i + 1]] for i in order]) if len(order) else images
    return images, [names[i] for i in order], [counts[i] for i in order]


def _load_pickle(path: Path) -> object:
    """A cache file as Ren et al.'s reader loads it: as written by Python 3, else (a Python 2 file) with bytes."""
    try:
        with open(path, "rb") as f:
            return safe_unpickle(f)
    except UnicodeDecodeError:
        with open(path, "rb") as f:
            return safe_unpickle(f, encoding="bytes")


def _csv_files(folder: Path, published: dict[str, list[str]]) -> dict[str, list[Path]]:
    """``wnid -> image paths`` from Ravi & Larochelle's csv files and the ``images/`` folder."""
    images = folder / "images"
    files: dict[str, list[Path]] = {}
    for split in ("train", "val", "test"):
        path = folder / f"{split}.csv"
        if not path.is_file():
            raise InvalidDatasetError(f"{folder} has train.csv but no {split}.csv: put all three split files there")
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
            raise InvalidDatasetError(f"{path} does not start with the header 'filename,label': not a mini-ImageNet csv")
        found: dict[str, list[Path]] = {}
        for line, row in enumerate(rows[1:], start=2):
            if len(row) != 2:
                raise InvalidDatasetError(f"{path}, line {line}: expected 'filename,label', got {','.join(row)!r}")
            found.setdefault(row[1], []).append(images / row[0])
        _check(split, list(found), published, str(path))
        files.update(found)
    missing = next((p for paths in files.values() for p in paths if not p.is_file()), None)
    if missing is not None:
        raise InvalidDatasetError(f"{missing} is named in the csv files but missing: put every mini-ImageNet image in "
                                  f"{images}")
    return files


def _split_folders(folder: Path, published: dict[str, list[str]]) -> dict[str, list[Path]]:
    """``wnid -> image paths`` from ``train/<wnid>/``, ``val/<wnid>/``, ``test/<wnid>/``."""
    if not all((folder / s).is_dir() for s in ("train", "val", "test")):
        raise InvalidDatasetError(f"{folder} holds neither the mini-ImageNet pickles, nor train.csv with images/, "
                                  f"nor train/, val/, test/ folders. {FETCH_HINT}")
    files = {}
    for split in ("train", "val", "test"):
        found = {d.name: image_files(d) for d in sorted((folder / split).iterdir()) if d.is_dir()}
        _check(split, list(found), published, str(folder / split))
        files.update(found)
    return files

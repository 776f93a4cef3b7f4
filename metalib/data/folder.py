"""Your own images: a folder with one sub-folder per class, any sizes, grey or RGB, classes of any size.

``load_image_folder(root)`` decodes every image once (resized, as uint8) into a memory-mapped cache file keyed by
the folder's content and the preprocessing (each split's images are then read from it into memory, still uint8), splits the classes into train/val/test (a split file or a seeded split,
checked disjoint), computes the per-channel normalisation on the training classes and returns a
:class:`FewShotDataset` whose splits the :class:`~metalib.tasks.EpisodeSampler` draws episodes from.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..paths import cache_dir as resolve_cache_dir
from .base import ClassSplit, DatasetNotFoundError, FewShotDataset, InvalidDatasetError
from .download import open_temp
from .images import IMAGE_SUFFIXES, ImagePreprocess, channel_stats, decode_image, image_files, image_mode

__all__ = ["load_image_folder", "read_split_file", "read_class_list", "check_assignment", "seeded_split", "SPLITS",
           "cached_images", "dataset_splits"]

SPLITS = ("train", "val", "test")
_CACHE_VERSION = 1


def load_image_folder(root: str | os.PathLike[str], *, image_size: int = 84, channels: int | None = None,
                      split_file: str | os.PathLike[str] | None = None,
                      fractions: Sequence[float] = (0.64, 0.16, 0.20), seed: int = 0,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      resample: str = "lanczos", cache_dir: str | os.PathLike[str] | None = None,
                      workers: int = 4) -> FewShotDataset:
    """The classes of ``root/<class>/<image>`` as a train/val/test :class:`FewShotDataset`.

    ``channels``: 1 or 3; ``None`` takes the images' own (an error if grey and RGB are mixed). ``split_file``:
    a JSON file ``{"train": [...], "val": [...], "test": [...]}`` or a folder of ``train.txt``, ``val.txt``,
    ``test.txt`` (one class per line); without one, the classes are split at random by ``seed`` in
    ``fractions``. ``mean``/``std``: the normalisation (default: computed on the training classes).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist: pass a folder with one sub-folder per class")
    files = _class_files(root)
    names = sorted(files)
    if split_file is not None:
        assignment = read_split_file(split_file, names)
    else:
        assignment = seeded_split(names, fractions, seed)
    cache = resolve_cache_dir(cache_dir) / "image-folders"
    content = _content_key(root, files)
    if channels is None:
        channels = _folder_channels(root, files, cache / f"{_folder_stem(root)}-{content}.channels")
    pre = ImagePreprocess(image_size, channels, resample=resample)
    images, counts = cached_images(root, files, pre, cache_dir, workers, content=content)
    return dataset_splits(root.name, str(root), images, names, counts, assignment, pre, mean, std)


def dataset_splits(name: str, source: str, images: np.ndarray, names: list[str], counts: Sequence[int],
                   assignment: dict[str, list[str]], pre: ImagePreprocess, mean: Sequence[float] | None,
                   std: Sequence[float] | None) -> FewShotDataset:
    """Ragged :class:`ClassSplit` s of ``images`` (``[total, C, H, W]`` uint8, classes ``names`` one after another
    with ``counts`` images each) for each split of ``assignment``, normalised by ``mean``/``std`` or by the
    statistics of the training split."""
    offsets = np.concatenate([[0], np.cumsum(counts)])
    index = {n: i for i, n in enumerate(names)}

    def rows(classes: list[str]) -> np.ndarray:
        return np.concatenate([np.arange(offsets[index[c]], offsets[index[c] + 1]) for c in classes]) \
            if classes else np.zeros(0, dtype=np.int64)

    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither (then they are computed on the training classes)")
    if mean is None:
        train = rows(assignment.get("train", []))
        if len(train) == 0:
            raise InvalidDatasetError(f"{source}: the train split has no classes to compute the normalisation from; "
                                      "give mean and std, or put classes in train")
        mean, std = channel_stats((images[train[i:i + 1024]] for i in range(0, len(train), 1024)), pre.channels)
    pre = pre.with_stats(mean, std)
    splits = {}
    for split, classes in assignment.items():
        if classes:
            x = torch.from_numpy(np.ascontiguousarray(images[rows(classes)]))
            splits[split] = ClassSplit(split, x, list(classes), counts=torch.tensor([counts[index[c]] for c in classes]),
                                       preprocess=pre)
    return FewShotDataset(name, splits, pre, source)


def _class_files(root: Path) -> dict[str, list[Path]]:
    """``class name -> image files`` of ``root``'s sub-folders; what is skipped (files of other types, nested
    folders) is said in one warning, so that a class that vanishes does not vanish silently."""
    found, other_files, nested = {}, [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        imgs = image_files(sub)
        if imgs:
            found[sub.name] = imgs
        for p in sub.iterdir():
            if p.name.startswith("."):
                continue
            if p.is_dir():
                nested.append(p)
            elif p.suffix.lower() not in IMAGE_SUFFIXES:
                other_files.append(p)
    if other_files or nested:
        parts = [f"{len(other_files)} file(s) without an image suffix (e.g. {other_files[0]})" if other_files else "",
                 f"{len(nested)} nested folder(s) (e.g. {nested[0]})" if nested else ""]
        warnings.warn(f"{root}: skipped {' and '.join(p for p in parts if p)}; images are read from "
                      f"<class>/<image> with a suffix in {', '.join(IMAGE_SUFFIXES)}", stacklevel=3)
    if len(found) < 2:
        raise InvalidDatasetError(f"{root} has {len(found)} class folder(s) with images: put each class's images in a "
                                  f"sub-folder of its own, {root}/<class name>/<image>.png (at least 2 classes)")
    return found


def _folder_channels(root: Path, files: dict[str, list[Path]], record: Path) -> int:
    """1 or 3 when every image is grey or every one is colour (else one line naming one of each); the answer is
    kept in ``record`` (keyed by the folder's content), so that later loads do not open every file again."""
    try:
        return int(record.read_text())
    except (OSError, ValueError):
        pass
    seen: dict[str, Path] = {}
    for paths in files.values():
        for p in paths:
            seen.setdefault(image_mode(p), p)
    if len(seen) > 1:
        raise InvalidDatasetError(f"{root} mixes grey and RGB images ({seen['L']} is grey, {seen['RGB']} is RGB): pass "
                                  "channels=3 (--channels 3) to read every image as RGB, or channels=1 for grey")
    channels = 1 if "L" in seen else 3
    try:
        f, tmp = open_temp(record)
        with f:
            f.write(str(channels).encode())
        os.replace(tmp, record)
    except OSError:
        pass  # a read-only cache: the headers are read again next time
    return channels


def read_split_file(path: str | os.PathLike[str], known: Sequence[str]) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` from a JSON file or a folder of ``<split>.txt`` files, checked
    against the ``known`` class names and for disjointness (one line naming the file and the classes)."""
    path = Path(path).expanduser()
    if path.is_dir():
        missing = [s for s in SPLITS if not (path / f"{s}.txt").is_file()]
        if len(missing) == len(SPLITS):
            raise DatasetNotFoundError(f"split folder {path} has none of train.txt, val.txt, test.txt")
        assignment = {s: read_class_list((path / f"{s}.txt").read_text()) for s in SPLITS if s not in missing}
    elif path.is_file():
        try:
            assignment = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidDatasetError(f"split file {path} is not valid JSON ({exc}): write "
                                      '{"train": [...], "val": [...], "test": [...]}') from None
        if not isinstance(assignment, dict) or not set(assignment) <= set(SPLITS) or not all(
                isinstance(v, list) and all(isinstance(c, str) for c in v) for v in assignment.values()):
            raise InvalidDatasetError(f"split file {path} must map train/val/test to lists of class names")
    else:
        raise DatasetNotFoundError(f"split file {path} does not exist: pass a JSON file or a folder of train.txt, "
                                   "val.txt, test.txt")
    return check_assignment(assignment, known, str(path))


def check_assignment(assignment: dict[str, list[str]], known: Sequence[str], where: str) -> dict[str, list[str]]:
    """``assignment`` with every split present, its classes known and no class in two splits."""
    known_set = set(known)
    out = {s: list(assignment.get(s, [])) for s in SPLITS}
    unknown = sorted({c for v in out.values() for c in v} - known_set)
    if unknown:
        raise InvalidDatasetError(f"{where} names {len(unknown)} class(es) that are not there: "
                                  f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}; fix the names")
    seen: dict[str, str] = {}
    for s, classes in out.items():
        for c in classes:
            if c in seen and seen[c] != s or classes.count(c) > 1:
                raise InvalidDatasetError(f"{where} puts class {c!r} in {seen.get(c, s)} and {s}: "
                                          "each class may be in one split, once")
            seen[c] = s
    return out


def read_class_list(text: str) -> list[str]:
    """The class names of a list file: one per line; blank lines and ``#`` comments skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def seeded_split(names: Sequence[str], fractions: Sequence[float] = (0.64, 0.16, 0.20),
                 seed: int = 0) -> dict[str, list[str]]:
    """Classes assigned to train/val/test at random (fixed by ``seed``) in proportions ``fractions``; every split
    with a positive fraction gets at least one class."""
    if len(fractions) != 3 or min(fractions) < 0 or fractions[0] <= 0:
        raise ValueError(f"fractions must be three numbers >= 0 (train > 0), got {tuple(fractions)}")
    total = sum(fractions)
    wanted = [f > 0 for f in fractions]
    if len(names) < sum(wanted):
        raise InvalidDatasetError(f"{len(names)} classes cannot fill {sum(wanted)} splits: add classes or give "
                                  "fractions with zeros")
    order = np.random.default_rng(seed).permutation(len(names))
    sizes = [int(round(len(names) * f / total)) if w else 0 for f, w in zip(fractions, wanted)]
    for i in (1, 2):
        sizes[i] = max(sizes[i], int(wanted[i]))
    sizes[0] = len(names) - sizes[1] - sizes[2]
    if sizes[0] < 1:
        raise InvalidDatasetError(f"fractions {tuple(fractions)} leave no training class of {len(names)}: give train a "
                                  "larger share")
    cuts = np.cumsum([0, *sizes])
    return {s: sorted(names[j] for j in order[cuts[i]:cuts[i + 1]]) for i, s in enumerate(SPLITS)}


def _folder_stem(root: Path) -> str:
    """The cache's name for a folder: its name and a hash of its full path (two folders of one name differ)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", root.name) or "root"
    return f"{name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"


def _content_key(root: Path, files: dict[str, list[Path]]) -> str:
    """A hash of the image files' names, sizes and modification times: it changes when any file does."""
    digest = hashlib.sha256(str(_CACHE_VERSION).encode())
    for name in sorted(files):
        for p in files[name]:
            st = p.stat()
            digest.update(f"\n{p.relative_to(root)}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def cached_images(root: Path, files: dict[str, list[Path]], pre: ImagePreprocess,
                  cache_dir: str | os.PathLike[str] | None = None, workers: int = 4,
                  content: str | None = None) -> tuple[np.ndarray, list[int]]:
    """Every image of ``files`` (classes in sorted order) decoded once as uint8 ``[total, C, H, W]``, memory-mapped from
    a cache keyed by the folder, the files' names, sizes and times, and the preprocessing; rebuilt when any of them
    changes, and the entry it replaces (same folder and preprocessing, older files) removed."""
    names = sorted(files)
    counts = [len(files[n]) for n in names]
    folder = resolve_cache_dir(cache_dir) / "image-folders"
    stem = f"{_folder_stem(root)}-{pre.size}px{pre.channels}c-{pre.resample}{'-inverted' if pre.invert else ''}"
    path = folder / f"{stem}-{content or _content_key(root, files)}.npy"
    if path.is_file():
        try:
            arr = np.load(path, mmap_mode="c")
            if arr.shape == (sum(counts), pre.channels, pre.size, pre.size) and arr.dtype == np.uint8:
                return arr, counts
        except (OSError, ValueError):
            pass  # an unreadable cache is rebuilt (it has our name: we wrote it)
    ordered = [p for n in names for p in files[n]]
    folder.mkdir(parents=True, exist_ok=True)
    f, tmp = open_temp(path)
    f.close()
    pool = ThreadPoolExecutor(max(1, workers))  # Pillow decodes and resizes without the GIL
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                        shape=(len(ordered), pre.channels, pre.size, pre.size))
        for i, arr in enumerate(pool.map(lambda p: decode_image(p, pre), ordered)):
            out[i] = arr
        out.flush()
        del out
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: the queued images are dropped, not decoded
    for old in folder.glob(f"{glob.escape(stem)}-*.npy"):  # the entries this one replaces: written here, by name
        if old != path and re.fullmatch(rf"{re.escape(stem)}-[0-9a-f]{{20}}\.npy", old.name):
            old.unlink(missing_ok=True)
    return np.load(path, mmap_mode="c"), counts

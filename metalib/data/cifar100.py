"""CIFAR-FS and FC100: few-shot benchmarks made of CIFAR-100's 100 classes (600 32x32 colour images each).

Both are read from CIFAR-100's python version (https://www.cs.toronto.edu/~kriz/cifar.html):
``cifar-100-python.tar.gz`` (md5 ``eb9058c3a382ffc7106e4002c42a8d85``) holding ``cifar-100-python/train``,
``test`` and ``meta``, Python pickles of dicts with bytes keys: ``b'data'`` uint8 ``[N, 3072]`` (the red, green
and blue 32x32 planes, each row-major), ``b'fine_labels'`` and ``b'coarse_labels'`` (lists of ints),
``b'filenames'``; ``meta`` has ``b'fine_label_names'`` and ``b'coarse_label_names'``. The train and test images
are pooled (600 per class), as Bertinetto et al. (CIFAR-FS: 64/16/20 classes) and Oreshkin et al. (FC100:
12/4/4 superclasses, so 60/20/20 classes that share no superclass across splits) do.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Sequence

import numpy as np

from .base import FewShotDataset, InvalidDatasetError, one_line, safe_unpickle
from .images import ImagePreprocess, resize_images

__all__ = ["CIFAR100_URL", "CIFAR100_MD5", "read_cifar100", "cifar_dataset"]

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
_MEMBERS = ("train", "test", "meta")


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = safe_unpickle(io.BytesIO(raw), encoding="bytes")
    except Exception as exc:  # a truncated or foreign file raises any of a dozen exception types
        raise InvalidDatasetError(f"{where} is not a readable CIFAR-100 pickle ({type(exc).__name__}: {exc}): "
                                  f"delete it (or the archive) and download {CIFAR100_URL} again") from None
    if not isinstance(obj, dict):
        raise InvalidDatasetError(f"{where} holds a {type(obj).__name__}, not CIFAR-100's dict: it is not CIFAR-100")
    return obj


def _members(path: Path) -> dict[str, tuple[bytes, str]]:
    """The raw bytes of train, test and meta, from the archive or from an extracted ``cifar-100-python`` folder."""
    if path.is_dir():
        folder = path / "cifar-100-python" if (path / "cifar-100-python").is_dir() else path
        missing = [m for m in _MEMBERS if not (folder / m).is_file()]
        if missing:
            raise InvalidDatasetError(f"{folder} lacks {', '.join(missing)}: it should hold CIFAR-100's extracted "
                                      f"train, test and meta (from {CIFAR100_URL})")
        return {m: ((folder / m).read_bytes(), str(folder / m)) for m in _MEMBERS}
    try:
        with tarfile.open(path, "r:*") as tar:
            out = {}
            for m in _MEMBERS:
                f = tar.extractfile(f"cifar-100-python/{m}")
                if f is None:
                    raise KeyError(m)
                out[m] = (f.read(), f"{path}:cifar-100-python/{m}")
            return out
    except KeyError as exc:
        raise InvalidDatasetError(f"{path} has no member cifar-100-python/{exc.args[0]}: it is not CIFAR-100's python "
                                  f"archive; download {CIFAR100_URL}") from None
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidDatasetError(f"{path} is not a readable tar.gz archive ({one_line(exc)}): delete it and download "
                                  f"{CIFAR100_URL} again") from None


def read_cifar100(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """``(images uint8 [60000, 3, 32, 32], fine [60000], coarse [60000], fine names, coarse names)``, train and test
    pooled, from the archive or an extracted folder; every structural problem is one line naming the file."""
    raw = _members(path)
    meta = _unpickle(*raw["meta"])
    try:
        fine_names = [n.decode() for n in meta[b"fine_label_names"]]
        coarse_names = [n.decode() for n in meta[b"coarse_label_names"]]
    except (KeyError, AttributeError):
        raise InvalidDatasetError(f"{raw['meta'][1]} lacks fine_label_names/coarse_label_names: it is not CIFAR-100's "
                                  "meta file") from None
    images, fine, coarse = [], [], []
    for part in ("train", "test"):
        d = _unpickle(*raw[part])
        try:
            data = np.asarray(d[b"data"])
            f, c = np.asarray(d[b"fine_labels"], dtype=np.int64), np.asarray(d[b"coarse_labels"], dtype=np.int64)
        except KeyError as exc:
            raise InvalidDatasetError(f"{raw[part][1]} has no key {exc.args[0]!r}: it is not CIFAR-100's {part} "
                                      "file") from None
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or not len(f) == len(data) == len(c):
            raise InvalidDatasetError(f"{raw[part][1]}: data {data.dtype} {data.shape} with {len(f)} labels, expected "
                                      "uint8 [N, 3072] and N labels")
        if len(f) and (f.min() < 0 or f.max() >= len(fine_names) or c.min() < 0 or c.max() >= len(coarse_names)):
            raise InvalidDatasetError(f"{raw[part][1]} has labels outside meta's {len(fine_names)} classes")
        images.append(data.reshape(-1, 3, 32, 32))
        fine.append(f)
        coarse.append(c)
    return np.concatenate(images), np.concatenate(fine), np.concatenate(coarse), fine_names, coarse_names


def cifar_dataset(name: str, path: Path, assignment: dict[str, list[str]], by_superclass: bool,
                  image_size: int = 32, mean: Sequence[float] | None = None,
                  std: Sequence[float] | None = None) -> FewShotDataset:
    """CIFAR-FS (``assignment`` of fine class names) or FC100 (``by_superclass``: of superclass names) from ``path``."""
    from .folder import dataset_splits

    images, fine, coarse, fine_names, coarse_names = read_cifar100(path)
    if by_superclass:
        unknown = sorted({c for v in assignment.values() for c in v} - set(coarse_names))
        if unknown:
            raise InvalidDatasetError(f"{path}: CIFAR-100's meta lacks the superclasses {unknown}: not CIFAR-100")
        fine_of = {c: sorted({fine_names[f] for f in np.unique(fine[coarse == coarse_names.index(c)])})
                   for c in coarse_names}
        assignment = {s: [f for c in v for f in fine_of[c]] for s, v in assignment.items()}
    unknown = sorted({c for v in assignment.values() for c in v} - set(fine_names))
    if unknown:
        raise InvalidDatasetError(f"{path}: CIFAR-100's meta lacks the classes {unknown[:5]}: not CIFAR-100")
    order = np.argsort(fine, kind="stable")  # classes one after another, in label order
    counts = np.bincount(fine, minlength=len(fine_names)).tolist()
    images = images[order]
    pre = ImagePreprocess(image_size, 3, resample="bilinear")
    images = resize_images(images, pre)
    return dataset_splits(name, str(path), images, fine_names, counts, assignment, pre, mean, std)


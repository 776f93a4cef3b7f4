"""The natural-image few-shot benchmarks by name, each with its published class split shipped as package data.

===================  =======================================  ===========  ==========================================
name                 paper (split)                            classes      source
===================  =======================================  ===========  ==========================================
``cifar-fs``         Bertinetto et al. 2019                   64/16/20     CIFAR-100 python archive (download, md5)
``fc100``            Oreshkin et al. 2018 (by superclass)     60/20/20     CIFAR-100 python archive (download, md5)
``mini-imagenet``    Vinyals et al. 2016; Ravi & Larochelle   64/16/20     a local copy only (no canonical download)
``cub``              Wah et al. 2011; Chen et al. 2019        100/50/50    CUB_200_2011.tgz (download, md5)
===================  =======================================  ===========  ==========================================

``load_dataset(name_or_folder)`` reads a benchmark (looked for in ``METALIB_DATA_DIR``, then the cache folder,
then downloaded where a canonical source exists) or a folder of your own images (:mod:`metalib.data.folder`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from ..paths import cache_dir as resolve_cache_dir, data_dir as resolve_data_dir
from .base import DatasetNotFoundError, FewShotDataset
from .cifar100 import CIFAR100_MD5, CIFAR100_URL, cifar_dataset
from .cub import CUB_MD5, CUB_URL, cub_dataset
from .download import find_or_download
from .folder import SPLITS, load_image_folder, read_class_list
from .miniimagenet import FETCH_HINT, mini_imagenet_dataset

__all__ = ["Benchmark", "BENCHMARKS", "published_split", "load_benchmark", "load_dataset", "is_benchmark"]


@dataclass(frozen=True)
class Benchmark:
    """A benchmark: its published split sizes, native image size, where a copy may be and how it is read."""

    name: str
    title: str
    sizes: tuple[int, int, int]           # train/val/test classes
    image_size: int                       # the size papers use
    local_names: tuple[str, ...]          # file or folder names looked for in the data and cache folders
    url: str | None
    md5: str | None
    fetch: str                            # what to fetch and where to put it, for the offline message
    read: Callable[..., FewShotDataset]   # read(found path, published split, cache_dir, image_size, mean, std)


Stats = Sequence[float] | None


def _cifar(by_superclass: bool, name: str) -> Callable[..., FewShotDataset]:
    def read(found: Path, published: dict, cache_dir: Path, image_size: int, mean: Stats, std: Stats) -> FewShotDataset:
        return cifar_dataset(name, found, published, by_superclass, image_size, mean, std)
    return read


def _mini(found: Path, published: dict, cache_dir: Path, image_size: int, mean: Stats, std: Stats) -> FewShotDataset:
    return mini_imagenet_dataset(found, published, image_size, mean, std, cache_dir)


def _cub(found: Path, published: dict, cache_dir: Path, image_size: int, mean: Stats, std: Stats) -> FewShotDataset:
    return cub_dataset(found, published, cache_dir, image_size, mean, std)


_CIFAR_FETCH = f"download {CIFAR100_URL} (md5 {CIFAR100_MD5}) into " + "{where}"
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("cifar-fs", "CIFAR-FS (Bertinetto et al. 2019)", (64, 16, 20), 32,
              ("cifar-100-python.tar.gz", "cifar-100-python"), CIFAR100_URL, CIFAR100_MD5, _CIFAR_FETCH,
              _cifar(False, "cifar-fs")),
    Benchmark("fc100", "FC100 (Oreshkin et al. 2018)", (60, 20, 20), 32,
              ("cifar-100-python.tar.gz", "cifar-100-python"), CIFAR100_URL, CIFAR100_MD5, _CIFAR_FETCH,
              _cifar(True, "fc100")),
    Benchmark("mini-imagenet", "mini-ImageNet (Ravi & Larochelle split)", (64, 16, 20), 84,
              ("mini-imagenet", "miniImagenet", "miniImageNet", "mini_imagenet"), None, None,
              FETCH_HINT + " inside {where}", _mini),
    Benchmark("cub", "CUB-200-2011 (Chen et al. 2019 split)", (100, 50, 50), 84,
              ("CUB_200_2011.tgz", "CUB_200_2011"), CUB_URL, CUB_MD5,
              f"download {CUB_URL} (md5 {CUB_MD5}) into " + "{where}", _cub),
]}


def is_benchmark(name: str) -> bool:
    """Whether ``name`` is one of :data:`BENCHMARKS` (else it is taken for a folder)."""
    return name in BENCHMARKS


def published_split(name: str) -> dict[str, list[str]]:
    """The benchmark's published classes per split, as shipped in ``metalib/data/split_lists/<name>/`` (FC100's
    lists name CIFAR-100 superclasses; the others classes)."""
    folder = resources.files("metalib.data") / "split_lists" / name
    out = {}
    for split in SPLITS:
        out[split] = read_class_list((folder / f"{split}.txt").read_text())
    return out


def load_benchmark(name: str, *, data_dir: str | os.PathLike[str] | None = None,
                   cache_dir: str | os.PathLike[str] | None = None, download: bool = True,
                   image_size: int | None = None, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None) -> FewShotDataset:
    """Benchmark ``name`` (:data:`BENCHMARKS`) at ``image_size`` (default: the papers'). Looked for in ``data_dir``
    (default ``METALIB_DATA_DIR``) and the cache folder, else downloaded (checksum-verified, atomic) into the cache
    folder where a canonical source exists; otherwise one line saying what to fetch and where to put it."""
    if name not in BENCHMARKS:
        from ..errors import ArgumentError

        raise ArgumentError(f"unknown benchmark {name!r}: use one of {sorted(BENCHMARKS)} or a folder of images")
    spec = BENCHMARKS[name]
    cache = resolve_cache_dir(cache_dir)
    local = resolve_data_dir(data_dir)
    roots = [r for r in (local, cache) if r is not None]
    candidates = [root / n for root in roots for n in spec.local_names]
    published = published_split(name)
    size = spec.image_size if image_size is None else image_size

    def not_found(looked: Sequence[Path], reason: str) -> str:
        return (f"{spec.title} not found ({reason}); looked in {', '.join(str(p) for p in looked)}: "
                + spec.fetch.replace("{where}", str(local or cache)))

    def use(found: Path) -> FewShotDataset:
        return spec.read(found, published, cache, size, mean, std)

    if spec.url is None:
        looked = [c for c in candidates if c.exists()]
        if not looked:
            raise DatasetNotFoundError(not_found(candidates, "it cannot be downloaded"))
        return find_or_download(spec.title, candidates, candidates[-1], "", "", False, not_found, use)
    target = cache / spec.local_names[0]
    return find_or_download(spec.title, candidates, target, spec.url, spec.md5 or "", download, not_found, use)


def load_dataset(name_or_folder: str | os.PathLike[str], **kwargs) -> FewShotDataset:
    """A benchmark by name (:func:`load_benchmark`'s keywords) or a folder of your own images
    (:func:`~metalib.data.folder.load_image_folder`'s keywords)."""
    if isinstance(name_or_folder, str) and name_or_folder in BENCHMARKS:
        return load_benchmark(name_or_folder, **kwargs)
    return load_image_folder(name_or_folder, **kwargs)

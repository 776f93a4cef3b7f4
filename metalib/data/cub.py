"""CUB-200-2011 (Wah et al. 2011): 11,788 photographs of 200 bird species, with the Chen et al. 2019 few-shot split
(100/50/50 classes: sorted by folder name, class ``i`` is train when ``i % 2 == 0``, val when ``i % 4 == 1``, test
when ``i % 4 == 3``; shipped as lists).

The canonical archive ``CUB_200_2011.tgz`` (https://data.caltech.edu/records/65de6-vp158, md5
``97eceeb196236b17998738112f37df78``) holds ``CUB_200_2011/`` with ``images/<NNN.Class_name>/<file>.jpg``,
``images.txt`` (``<image id> <path under images/>``), ``classes.txt`` (``<class id> <NNN.Class_name>``) and
``image_class_labels.txt`` (``<image id> <class id>``), ids from 1. The archive is extracted once into the cache
folder (never over a user's files); an extracted copy is used where it is.
"""
from __future__ import annotations

import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Sequence

from .base import FewShotDataset, ImagePreprocess, InvalidDatasetError, one_line
from .download import open_temp

__all__ = ["CUB_URL", "CUB_MD5", "cub_dataset", "cub_root", "read_cub_index"]

CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"
_INDEX = ("images.txt", "classes.txt", "image_class_labels.txt")


def _table(path: Path) -> list[tuple[int, str]]:
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value:
            raise InvalidDatasetError(f"{path}, line {line_no}: expected '<id> <value>', got {line!r}: not CUB-200-2011")
        rows.append((int(key), value.strip()))
    return rows


def read_cub_index(root: Path) -> dict[str, list[Path]]:
    """``class folder name -> image paths`` from ``images.txt``, ``classes.txt`` and ``image_class_labels.txt``,
    checked against each other and the files (one line naming the first problem)."""
    missing = [n for n in _INDEX if not (root / n).is_file()]
    if missing:
        raise InvalidDatasetError(f"{root} lacks {', '.join(missing)}: it is not an extracted CUB-200-2011 "
                                  f"(from {CUB_URL})")
    classes = dict(_table(root / "classes.txt"))
    images = dict(_table(root / "images.txt"))
    labels = {i: int(c) for i, c in _table(root / "image_class_labels.txt")}
    if set(labels) != set(images):
        raise InvalidDatasetError(f"{root}: images.txt and image_class_labels.txt list different image ids")
    files: dict[str, list[Path]] = {name: [] for name in classes.values()}
    for image_id in sorted(images):
        if labels[image_id] not in classes:
            raise InvalidDatasetError(f"{root / 'image_class_labels.txt'}: image {image_id} has class "
                                      f"{labels[image_id]}, which classes.txt does not list")
        path = root / "images" / images[image_id]
        if not path.is_file():
            raise InvalidDatasetError(f"{path} is listed in images.txt but missing: extract the whole archive again")
        files[classes[labels[image_id]]].append(path)
    return files


def cub_root(found: Path, cache_dir: Path) -> Path:
    """The extracted ``CUB_200_2011`` folder: ``found`` itself, the folder inside it, or ``found`` (the archive)
    extracted into ``cache_dir`` (to a temporary folder first, renamed when complete)."""
    for cand in (found, found / "CUB_200_2011"):
        if cand.is_dir() and (cand / "images.txt").is_file():
            return cand
    if found.is_dir():
        raise InvalidDatasetError(f"{found} holds no CUB_200_2011 folder with images.txt: extract {CUB_URL} there")
    target = cache_dir / "CUB_200_2011"
    if (target / "images.txt").is_file():
        return target
    if target.exists():
        raise InvalidDatasetError(f"{target} exists but holds no images.txt (not extracted by metalib): move it away, "
                                  f"and metalib extracts {found} there")
    cache_dir.mkdir(parents=True, exist_ok=True)
    f, marker = open_temp(target)  # also removes the markers that killed extractions left
    f.close()
    tmp = marker.with_suffix(".dir")
    for orphan in cache_dir.glob(".CUB_200_2011.*.dir"):  # a killed extraction's folder, its marker swept: ours
        if re.fullmatch(r"\.CUB_200_2011\.\d+-[0-9a-f]{12}\.dir", orphan.name) and not orphan.with_suffix(".part").exists():
            shutil.rmtree(orphan, ignore_errors=True)
    try:
        with tarfile.open(found, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("CUB_200_2011/")]
            if not members:
                raise InvalidDatasetError(f"{found} has no CUB_200_2011/ folder: it is not the CUB-200-2011 archive")
            unsafe = [m.name for m in members if ".." in Path(m.name).parts or not (m.isfile() or m.isdir())]
            if unsafe:
                raise InvalidDatasetError(f"{found} holds unexpected members ({unsafe[0]}): not the CUB-200-2011 archive")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12
            tar.extractall(tmp, members=members, **safe)  # only plain files and folders under CUB_200_2011/
        os.replace(tmp / "CUB_200_2011", target)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidDatasetError(f"{found} is not a readable tgz archive ({one_line(exc)}): delete it and download {CUB_URL} "
                                  "again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder
        marker.unlink(missing_ok=True)
    return target


def cub_dataset(found: Path, published: dict[str, list[str]], cache_dir: Path, image_size: int = 84,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> FewShotDataset:
    """CUB-200-2011 with the ``published`` (Chen et al.) split, its images resized to ``image_size``."""
    from .folder import cached_images, check_assignment, dataset_splits

    root = cub_root(found, cache_dir)
    files = read_cub_index(root)
    names = sorted(files)
    assignment = check_assignment(published, names, f"the CUB split lists against {root / 'classes.txt'}")
    pre = ImagePreprocess(image_size, 3, resample="lanczos")
    images, counts = cached_images(root, files, pre, cache_dir)
    return dataset_splits("cub", str(root), images, names, counts, assignment, pre, mean, std)

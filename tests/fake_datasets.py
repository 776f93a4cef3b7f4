"""Small files in exactly the formats of the real datasets, for the loaders' tests (no natural-image data can be
downloaded on the test machines). Each writer says where its format is documented.
"""
from __future__ import annotations

import csv
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from metalib.data import published_split


def _png(rng: np.random.Generator, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def image_folder(root: Path, sizes: dict[str, int], *, mode: str = "RGB", seed: int = 0, suffix: str = ".png",
                 image_size: tuple[int, int] = (40, 30)) -> Path:
    """``root/<class>/<i><suffix>``: ``sizes[class]`` random images each, of ``image_size`` (width, height)."""
    rng = np.random.default_rng(seed)
    for name, n in sizes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(rng, image_size, mode).save(root / name / f"{i:03d}{suffix}")
    return root


def cifar100_archive(path: Path, per_class: tuple[int, int] = (3, 1), seed: int = 0) -> Path:
    """``cifar-100-python.tar.gz`` as https://www.cs.toronto.edu/~kriz/cifar.html documents it (and torchvision's
    ``CIFAR100`` and torchmeta read it): members ``cifar-100-python/{train,test,meta}`` (plus the stray
    ``file.txt~``), Python pickles of dicts with bytes keys; ``b'data'`` uint8 ``[N, 3072]`` (R, G, B planes of
    32x32, row-major), ``b'fine_labels'``/``b'coarse_labels'`` lists of ints, ``b'filenames'``, ``b'batch_label'``;
    ``meta``: ``b'fine_label_names'``, ``b'coarse_label_names'``. ``per_class`` images per class in train and test
    (the real archive: 500 and 100). Each image's red plane holds its fine label, so tests can trace it."""
    import json

    mapping = json.loads((Path(__file__).parent / "fixtures" / "cifar100_labels.json").read_text())
    fine_names, coarse_names = mapping["fine_label_names"], mapping["coarse_label_names"]
    fine_to_coarse = mapping["fine_to_coarse_index"]
    rng = np.random.default_rng(seed)
    members = {"meta": {b"fine_label_names": [n.encode() for n in fine_names],
                        b"coarse_label_names": [n.encode() for n in coarse_names]}}
    for part, n in zip(("train", "test"), per_class):
        labels = [f for f in range(100) for _ in range(n)]
        order = rng.permutation(len(labels))  # the real files are not sorted by class
        labels = [labels[i] for i in order]
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        data[:, :1024] = np.array(labels, dtype=np.uint8)[:, None]
        members[part] = {b"batch_label": f"{part}ing batch 1 of 1".encode(), b"fine_labels": labels,
                         b"coarse_labels": [fine_to_coarse[f] for f in labels], b"data": data,
                         b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in [("file.txt~", b""), *((k, pickle.dumps(v, protocol=2)) for k, v in members.items())]:
            raw = obj
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def mini_imagenet_pickles(folder: Path, per_class: int = 3, side: int = 84, seed: int = 0,
                          val_name: str = "mini-imagenet-cache-validation.pkl") -> Path:
    """learn2learn's ``mini-imagenet-cache-{train,validation,test}.pkl`` (the format of Ren et al. 2018's
    ``fewshot/data/mini_imagenet.py``): a dict with ``"image_data"`` uint8 ``[N, 84, 84, 3]`` and ``"class_dict"``
    mapping each wnid to its row indices (rows interleaved across classes here, so order is not assumed)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "mini-imagenet-cache-train.pkl"), ("val", val_name),
                        ("test", "mini-imagenet-cache-test.pkl")):
        wnids = published_split("mini-imagenet")[split]
        n = len(wnids) * per_class
        rows = rng.permutation(n)
        data = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        class_dict = {w: sorted(rows[i * per_class:(i + 1) * per_class].tolist()) for i, w in enumerate(wnids)}
        for i, w in enumerate(wnids):
            data[class_dict[w], 0, 0, 0] = i  # traceable
        with open(folder / name, "wb") as f:
            pickle.dump({"image_data": data, "class_dict": class_dict}, f, protocol=4)
    return folder


def mini_imagenet_csv(folder: Path, per_class: int = 2, seed: int = 0) -> Path:
    """Ravi & Larochelle's layout (github.com/twitter/meta-learning-lstm, ``data/miniImagenet/*.csv``):
    ``train.csv``, ``val.csv``, ``test.csv`` with the header ``filename,label`` and rows
    ``n0153282900000005.jpg,n01532829`` (wnid + 8-digit index), next to a flat ``images/`` folder of those JPEGs
    (not 84x84: the distributed folder is resized by the user's scripts)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["filename", "label"])
            for wnid in published_split("mini-imagenet")[split]:
                for i in range(1, per_class + 1):
                    name = f"{wnid}{i:08d}.jpg"
                    _png(rng, (50, 40)).save(folder / "images" / name, quality=90)
                    w.writerow([name, wnid])
    return folder


def cub_archive(path: Path, per_class: int = 2, seed: int = 0, grey_every: int = 7) -> Path:
    """``CUB_200_2011.tgz`` as distributed (https://www.vision.caltech.edu/datasets/cub_200_2011/, the archive's
    README; read by learn2learn's ``cu_birds200.py`` and CloserLookFewShot's ``write_CUB_filelist.py``):
    ``attributes.txt`` at the top, then ``CUB_200_2011/`` with ``images/<NNN.Class>/<file>.jpg``, ``images.txt``
    (``<id> <path>``), ``classes.txt`` (``<id> <NNN.Class>``), ``image_class_labels.txt`` (``<id> <class id>``),
    ``train_test_split.txt``; ids from 1. Some real images are grey: every ``grey_every``-th one here too."""
    rng = np.random.default_rng(seed)
    classes = sorted(c for v in published_split("cub").values() for c in v)
    images, labels, split = [], [], []
    files: dict[str, bytes] = {}
    for cid, cls in enumerate(classes, start=1):
        for i in range(per_class):
            rel = f"{cls}/{cls.split('.', 1)[1].title()}_{i:04d}_{cid * 100 + i}.jpg"
            buf = io.BytesIO()
            _png(rng, (60, 45), "L" if len(images) % grey_every == 0 else "RGB").save(buf, "JPEG")
            files[f"CUB_200_2011/images/{rel}"] = buf.getvalue()
            images.append(f"{len(images) + 1} {rel}")
            labels.append(f"{len(labels) + 1} {cid}")
            split.append(f"{len(split) + 1} {i % 2}")
    files["CUB_200_2011/images.txt"] = ("\n".join(images) + "\n").encode()
    files["CUB_200_2011/classes.txt"] = ("\n".join(f"{i} {c}" for i, c in enumerate(classes, 1)) + "\n").encode()
    files["CUB_200_2011/image_class_labels.txt"] = ("\n".join(labels) + "\n").encode()
    files["CUB_200_2011/train_test_split.txt"] = ("\n".join(split) + "\n").encode()
    files["attributes.txt"] = b"1 has_bill_shape::curved_(up_or_down)\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path

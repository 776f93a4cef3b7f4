"""The natural-image benchmarks, read from small files in exactly their real formats (tests/fake_datasets.py):
published splits, every layout each is distributed in, verified downloads from a local HTTP server, checksum
failures, offline use, and corrupt or truncated copies."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from metalib.data import BENCHMARKS, load_benchmark, load_dataset, published_split
from metalib.data.base import DatasetNotFoundError, InvalidDatasetError
from metalib.tasks import EpisodeSampler
import fake_datasets as fake

LABELS = json.loads((Path(__file__).parent / "fixtures" / "cifar100_labels.json").read_text())


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_published_splits_are_shipped_disjoint_and_of_the_published_sizes(name):
    split = published_split(name)
    sizes = tuple(len(split[s]) for s in ("train", "val", "test"))
    classes = [c for v in split.values() for c in v]
    assert len(set(classes)) == len(classes)
    if name == "fc100":  # 12/4/4 superclasses of 5 classes each
        assert sizes == (12, 4, 4) and set(classes) == set(LABELS["coarse_label_names"])
        assert tuple(5 * n for n in sizes) == BENCHMARKS[name].sizes
    else:
        assert sizes == BENCHMARKS[name].sizes
    if name == "cifar-fs":
        assert set(classes) == set(LABELS["fine_label_names"])
    if name == "cub":  # Chen et al.: sorted class i is train when i % 2 == 0, val when i % 4 == 1, test when i % 4 == 3
        order = sorted(classes)
        assert split["train"] == order[0::2] and split["val"] == order[1::4] and split["test"] == order[3::4]
    if name == "mini-imagenet":
        assert all(c.startswith("n") and len(c) == 9 for c in classes)


@pytest.fixture
def cifar(tmp_path) -> Path:
    return fake.cifar100_archive(tmp_path / "data" / "cifar-100-python.tar.gz")


def test_cifar_fs_from_the_archive_pools_train_and_test(cifar, tmp_path):
    ds = load_benchmark("cifar-fs", data_dir=cifar.parent, cache_dir=tmp_path / "cache", download=False)
    split = published_split("cifar-fs")
    for s in ("train", "val", "test"):
        assert ds[s].class_names == split[s] and ds[s].class_sizes == [4] * len(split[s])  # 3 train + 1 test
        for j, name in enumerate(ds[s].class_names):  # the red plane holds each image's fine label
            assert (ds[s].class_images(j)[:, 0] == LABELS["fine_label_names"].index(name)).all()
    assert ds.preprocess.size == 32 and ds["train"].images.shape[1:] == (3, 32, 32)
    batch = EpisodeSampler(ds["test"], 5, 1, 3, seed=0).batch([0, 1])
    assert batch.support_x.shape == (2, 5, 3, 32, 32)


def test_fc100_splits_by_superclass(cifar, tmp_path):
    ds = load_benchmark("fc100", data_dir=cifar.parent, cache_dir=tmp_path / "cache", download=False)
    coarse = {f: LABELS["coarse_label_names"][c] for f, c in zip(LABELS["fine_label_names"],
                                                                   LABELS["fine_to_coarse_index"])}
    supers = {s: {coarse[c] for c in ds[s].class_names} for s in ("train", "val", "test")}
    assert [len(ds[s]) for s in ("train", "val", "test")] == [60, 20, 20]
    assert supers["train"] == set(published_split("fc100")["train"]) and not supers["train"] & supers["test"]
    assert supers["test"] == {"aquatic_mammals", "insects", "medium_mammals", "people"}


def test_cifar_from_an_extracted_folder_and_resized(cifar, tmp_path):
    import tarfile

    with tarfile.open(cifar) as tar:
        tar.extractall(tmp_path / "local", filter="data")
    ds = load_dataset("cifar-fs", data_dir=tmp_path / "local", cache_dir=tmp_path / "cache", download=False,
                      image_size=40)
    assert ds["val"].images.shape[1:] == (3, 40, 40) and "cifar-100-python" in ds.source


def test_cifar_downloads_verified_from_a_server(tmp_path, http_folder, monkeypatch):
    www, base = http_folder
    archive = fake.cifar100_archive(www / "cifar-100-python.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    spec = BENCHMARKS["cifar-fs"]
    monkeypatch.setitem(BENCHMARKS, "cifar-fs", dataclasses.replace(spec, url=f"{base}/cifar-100-python.tar.gz", md5=md5))
    cache = tmp_path / "cache"
    ds = load_benchmark("cifar-fs", data_dir=tmp_path / "empty", cache_dir=cache)
    assert (cache / "cifar-100-python.tar.gz").read_bytes() == archive.read_bytes() and len(ds["train"]) == 64
    assert not list(cache.glob(".*part"))
    # a wrong checksum: nothing kept, one line naming the URL and what to do
    monkeypatch.setitem(BENCHMARKS, "cifar-fs", dataclasses.replace(spec, url=f"{base}/cifar-100-python.tar.gz",
                                                                    md5="0" * 32))
    with pytest.raises(DatasetNotFoundError, match="md5 mismatch") as err:
        load_benchmark("cifar-fs", data_dir=tmp_path / "empty", cache_dir=tmp_path / "other")
    assert "download " in str(err.value) and not (tmp_path / "other" / "cifar-100-python.tar.gz").exists()


def test_offline_says_what_to_fetch_and_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_benchmark("cifar-fs", data_dir=tmp_path / "d", cache_dir=tmp_path / "c", download=False)
    message = str(err.value)
    assert "cifar-100-python.tar.gz" in message and "eb9058c3a382ffc7106e4002c42a8d85" in message
    assert str(tmp_path / "d") in message and "\n" not in message
    with pytest.raises(DatasetNotFoundError, match="mini-ImageNet has no canonical download.*mini-imagenet-cache"):
        load_benchmark("mini-imagenet", data_dir=tmp_path / "d", cache_dir=tmp_path / "c")


@pytest.mark.parametrize("damage", ["truncated", "not a tar", "wrong member"])
def test_corrupt_cifar_archives_are_one_line_and_kept(cifar, tmp_path, damage):
    if damage == "truncated":
        cifar.write_bytes(cifar.read_bytes()[: cifar.stat().st_size // 2])
    elif damage == "not a tar":
        cifar.write_text("<html>Google Drive quota exceeded</html>")
    else:
        import io
        import tarfile

        with tarfile.open(cifar, "w:gz") as tar:
            raw = pickle.dumps({b"data": 1})
            info = tarfile.TarInfo("cifar-100-python/meta")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    with pytest.raises(InvalidDatasetError) as err:
        load_benchmark("cifar-fs", data_dir=cifar.parent, cache_dir=tmp_path / "c", download=False)
    assert str(cifar) in str(err.value) and "\n" not in str(err.value) and cifar.exists()


@pytest.mark.parametrize("val_name", ["mini-imagenet-cache-validation.pkl", "mini-imagenet-cache-val.pkl"])
def test_mini_imagenet_from_the_pickle_caches(tmp_path, val_name):
    fake.mini_imagenet_pickles(tmp_path / "data" / "mini-imagenet", val_name=val_name)
    ds = load_benchmark("mini-imagenet", data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    split = published_split("mini-imagenet")
    for s in ("train", "val", "test"):
        assert sorted(ds[s].class_names) == sorted(split[s]) and ds[s].class_sizes == [3] * len(split[s])
        for j, wnid in enumerate(ds[s].class_names):  # pixel (0, 0) red holds the class's index in the file
            assert (ds[s].class_images(j)[:, 0, 0, 0] == split[s].index(wnid)).all()
    assert ds["train"].images.shape[1:] == (3, 84, 84)


def test_mini_imagenet_from_csv_files_and_an_images_folder(tmp_path):
    root = fake.mini_imagenet_csv(tmp_path / "data" / "miniImagenet")
    ds = load_benchmark("mini-imagenet", data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    assert [len(ds[s]) for s in ("train", "val", "test")] == [64, 16, 20] and ds["test"].images.shape[1:] == (3, 84, 84)
    missing = root / "images" / (published_split("mini-imagenet")["val"][0] + "00000002.jpg")
    missing.unlink()
    with pytest.raises(InvalidDatasetError, match=f"{missing.name} is named in the csv files but missing"):
        load_benchmark("mini-imagenet", data_dir=tmp_path / "data", cache_dir=tmp_path / "c")


def test_mini_imagenet_with_another_split_is_refused(tmp_path):
    folder = fake.mini_imagenet_pickles(tmp_path / "data" / "mini-imagenet")
    with open(folder / "mini-imagenet-cache-test.pkl", "rb") as f:
        d = pickle.load(f)
    d["class_dict"]["n99999999"] = d["class_dict"].pop(sorted(d["class_dict"])[0])
    with open(folder / "mini-imagenet-cache-test.pkl", "wb") as f:
        pickle.dump(d, f)
    with pytest.raises(InvalidDatasetError, match=r"not the Ravi & Larochelle split \(extra \['n99999999'\]"):
        load_benchmark("mini-imagenet", data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    (folder / "mini-imagenet-cache-test.pkl").write_bytes(b"\x80\x04trunc")
    with pytest.raises(InvalidDatasetError, match="is not a readable pickle"):
        load_benchmark("mini-imagenet", data_dir=tmp_path / "data", cache_dir=tmp_path / "c")


def test_mini_imagenet_from_split_folders(tmp_path):
    from PIL import Image

    root = tmp_path / "data" / "mini-imagenet"
    for s, wnids in published_split("mini-imagenet").items():
        for w in wnids:
            (root / s / w).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (84, 84), (i, 0, 0)).save(root / s / w / f"{w}{i:08d}.jpg")
    ds = load_benchmark("mini-imagenet", data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    assert ds["train"].class_sizes == [2] * 64


def test_cub_from_its_archive_extracts_into_the_cache_once(tmp_path):
    archive = fake.cub_archive(tmp_path / "data" / "CUB_200_2011.tgz")
    cache = tmp_path / "cache"
    ds = load_benchmark("cub", data_dir=archive.parent, cache_dir=cache, image_size=24)
    split = published_split("cub")
    assert [ds[s].class_names for s in ("train", "val", "test")] == [split["train"], split["val"], split["test"]]
    assert ds["train"].images.shape[1:] == (3, 24, 24) and ds["train"].class_sizes == [2] * 100  # grey ones as RGB
    assert (cache / "CUB_200_2011" / "images.txt").is_file() and not list(cache.glob(".*"))
    assert not (cache / "attributes.txt").exists()  # only CUB_200_2011/ is extracted
    archive.write_bytes(b"")  # the extracted copy is used from now on
    assert len(load_benchmark("cub", data_dir=archive.parent, cache_dir=cache, image_size=24)["val"]) == 50


def test_cub_index_problems_are_one_line(tmp_path):
    import tarfile

    archive = fake.cub_archive(tmp_path / "CUB_200_2011.tgz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "data", filter="data")
    root = tmp_path / "data" / "CUB_200_2011"
    labels = root / "image_class_labels.txt"
    labels.write_text(labels.read_text().replace("\n1 1\n", "\n", 1).replace("1 1\n", "", 1))
    with pytest.raises(InvalidDatasetError, match="list different image ids"):
        load_benchmark("cub", data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    (root / "classes.txt").unlink()
    with pytest.raises(InvalidDatasetError, match=r"lacks classes.txt: it is not an extracted CUB-200-2011"):
        load_benchmark("cub", data_dir=tmp_path / "data", cache_dir=tmp_path / "c")


def test_cub_download_from_a_server(tmp_path, http_folder, monkeypatch):
    www, base = http_folder
    archive = fake.cub_archive(www / "CUB_200_2011.tgz", per_class=1)
    spec = BENCHMARKS["cub"]
    monkeypatch.setitem(BENCHMARKS, "cub", dataclasses.replace(spec, url=f"{base}/CUB_200_2011.tgz",
                                                               md5=hashlib.md5(archive.read_bytes()).hexdigest()))
    ds = load_benchmark("cub", data_dir=tmp_path / "none", cache_dir=tmp_path / "cache", image_size=16)
    assert ds["test"].class_sizes == [1] * 50 and torch.is_tensor(ds["test"].images)
    assert np.isfinite(ds.preprocess.mean).all()


def test_cub_archive_problems_are_one_line_and_keep_the_users_files(tmp_path, http_folder, monkeypatch):
    archive = fake.cub_archive(tmp_path / "data" / "CUB_200_2011.tgz", per_class=1)
    archive.write_bytes(archive.read_bytes()[:2000])  # truncated mid-download
    with pytest.raises(InvalidDatasetError, match="is not a readable tgz archive") as err:
        load_benchmark("cub", data_dir=archive.parent, cache_dir=tmp_path / "c", download=False)
    assert "\n" not in str(err.value) and archive.exists()
    assert not [p for p in (tmp_path / "c").iterdir()]  # no half-extracted folder, no marker
    (tmp_path / "c2" / "CUB_200_2011").mkdir(parents=True)  # someone else's folder where metalib would extract
    with pytest.raises(InvalidDatasetError, match="exists but holds no images.txt"):
        load_benchmark("cub", data_dir=archive.parent, cache_dir=tmp_path / "c2", download=False)
    www, base = http_folder
    served = fake.cub_archive(www / "CUB_200_2011.tgz", per_class=1)
    monkeypatch.setitem(BENCHMARKS, "cub", dataclasses.replace(BENCHMARKS["cub"], url=f"{base}/CUB_200_2011.tgz",
                                                               md5="f" * 32))
    with pytest.raises(DatasetNotFoundError, match="md5 mismatch"):
        load_benchmark("cub", data_dir=tmp_path / "none", cache_dir=tmp_path / "c3")
    assert served.exists() and not (tmp_path / "c3" / "CUB_200_2011.tgz").exists()


def test_pickles_cannot_run_code(tmp_path):
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    folder = fake.mini_imagenet_pickles(tmp_path / "data" / "mini-imagenet")
    with open(folder / "mini-imagenet-cache-train.pkl", "wb") as f:
        pickle.dump({"image_data": Evil(), "class_dict": {}}, f)
    with pytest.raises(InvalidDatasetError, match="refers to posix.system"):
        load_benchmark("mini-imagenet", data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    assert not (tmp_path / "pwned").exists()


def test_python2_mini_imagenet_pickles_with_bytes_keys(tmp_path):
    folder = fake.mini_imagenet_pickles(tmp_path / "data" / "mini-imagenet", per_class=2)
    for name in folder.iterdir():  # rewritten as Python 2 wrote them: bytes keys (read with encoding="bytes")
        with open(name, "rb") as f:
            d = pickle.load(f)
        with open(name, "wb") as f:
            pickle.dump({b"image_data": d["image_data"], b"class_dict": {k.encode(): v for k, v in d["class_dict"].items()}},
                        f, protocol=2)
    ds = load_benchmark("mini-imagenet", data_dir=tmp_path / "data", cache_dir=tmp_path / "c")
    assert ds["val"].class_sizes == [2] * 16

"""Your own images: folders with one sub-folder per class (ragged classes, any size, grey or RGB), their cache,
class splits, normalisation, episodes drawn from them, and every bad input as one line naming the file and the fix."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import metalib.data.folder as folder_mod
from metalib.data import ClassSplit, ImagePreprocess, InvalidDatasetError, load_image_folder
from metalib.data.base import DatasetNotFoundError
from metalib.errors import ArgumentError
from metalib.tasks import EpisodeSampler
from fake_datasets import image_folder

SIZES = {f"class{i:02d}": 4 + i % 5 for i in range(15)}  # 4..8 images: ragged


@pytest.fixture
def own(tmp_path) -> Path:
    return image_folder(tmp_path / "mine", SIZES, image_size=(41, 29))


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_ragged_classes_are_resized_split_and_normalised(own, tmp_path):
    before = snapshot(own)
    ds = load_image_folder(own, image_size=20, cache_dir=tmp_path / "cache", seed=3)
    assert snapshot(own) == before  # the user's folder is only read
    assert set(ds.splits) == {"train", "val", "test"}
    names = [c for s in ds.splits.values() for c in s.class_names]
    assert sorted(names) == sorted(SIZES) and len(set(names)) == len(names)  # every class once: disjoint
    assert [len(ds[s]) for s in ("train", "val", "test")] == [10, 2, 3]  # 64/16/20 percent of 15, rounded
    for split in ds.splits.values():
        assert split.ragged and split.images.dtype == torch.uint8 and split.images.shape[1:] == (3, 20, 20)
        assert split.class_sizes == [SIZES[c] for c in split.class_names]
    # class images are the files, in order, resized
    first = ds["train"].class_names[0]
    expected = np.asarray(Image.open(own / first / "000.png").convert("RGB").resize((20, 20), Image.LANCZOS))
    assert torch.equal(ds["train"].class_images(0)[0], torch.from_numpy(expected.transpose(2, 0, 1).copy()))
    # the normalisation comes from the training classes: their pixels have mean 0 and std 1 after it
    pre = ds.preprocess
    x = ds["train"].images.double() / 255
    normalised = (x - torch.tensor(pre.mean).view(3, 1, 1)) / torch.tensor(pre.std).view(3, 1, 1)
    assert normalised.mean().abs() < 1e-6 and (normalised.transpose(0, 1).flatten(1).std(1) - 1).abs().max() < 1e-3


def test_a_seed_fixes_the_split_and_another_changes_it(own, tmp_path):
    a = load_image_folder(own, image_size=12, cache_dir=tmp_path / "c", seed=0)
    b = load_image_folder(own, image_size=12, cache_dir=tmp_path / "c", seed=0)
    c = load_image_folder(own, image_size=12, cache_dir=tmp_path / "c", seed=1)
    assert a["test"].class_names == b["test"].class_names != c["test"].class_names


def test_episodes_from_ragged_classes(own, tmp_path):
    ds = load_image_folder(own, image_size=12, cache_dir=tmp_path / "c", split_file=_split(tmp_path, list(SIZES), []))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = EpisodeSampler(ds["train"], 4, 2, 4, seed=5)  # needs 6 images: classes of 4 and 5 are left out
    small = [c for c, n in SIZES.items() if n < 6]
    assert sorted(t.split(" ")[0] for t in sampler.too_small) == sorted(small)
    assert any("left out of its episodes" in str(w.message) and small[0] in str(w.message) for w in caught)
    batch = sampler.batch(range(30))
    assert batch.support_x.shape == (30, 8, 3, 12, 12) and batch.query_x.shape == (30, 16, 3, 12, 12)
    split = ds["train"]
    for t in range(30):
        classes = batch.info["class_ids"][t].tolist()
        assert not set(classes) & {split.class_names.index(c) for c in small}
        for j, c in enumerate(classes):
            ids = torch.cat([batch.info["support_drawing_ids"][t].view(4, 2)[j], batch.info["query_drawing_ids"][t].view(4, 4)[j]])
            assert len(set(ids.tolist())) == 6 and int(ids.max()) < split.class_sizes[c]  # no image twice, none past the class
            pre = ds.preprocess
            expected = (split.class_images(c)[ids[0]].double() / 255 - torch.tensor(pre.mean).view(3, 1, 1)) \
                / torch.tensor(pre.std).view(3, 1, 1)
            assert (batch.support_x[t, 2 * j].double() - expected).abs().max() < 1e-5
    again = EpisodeSampler(ds["train"], 4, 2, 4, seed=5).batch(range(30))
    assert torch.equal(again.support_x, batch.support_x)  # one seed, the same episodes
    with pytest.raises(ArgumentError, match=r"needs 12 classes of at least 6 images .* too small: class"):
        EpisodeSampler(ds["train"], 12, 2, 4)


def _split(tmp_path: Path, train: list[str], test: list[str], val: list[str] | None = None) -> Path:
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": train, "val": val or [], "test": test}))
    return path


def test_a_split_file_as_json_or_a_folder_of_lists(own, tmp_path):
    names = sorted(SIZES)
    ds = load_image_folder(own, image_size=12, cache_dir=tmp_path / "c",
                           split_file=_split(tmp_path, names[:9], names[12:], names[9:12]))
    assert ds["train"].class_names == names[:9] and ds["test"].class_names == names[12:]
    lists = tmp_path / "lists"
    lists.mkdir()
    for s, part in (("train", names[:9]), ("val", names[9:12]), ("test", names[12:])):
        (lists / f"{s}.txt").write_text("# a comment\n" + "\n".join(part) + "\n")
    assert load_image_folder(own, image_size=12, cache_dir=tmp_path / "c", split_file=lists)["val"].class_names == names[9:12]


@pytest.mark.parametrize("content, message", [
    ('{"train": ["class00", "nosuch"], "test": ["class01"]}', r"names 1 class\(es\) that are not there: nosuch"),
    ('{"train": ["class00", "class01"], "test": ["class01"]}', r"puts class 'class01' in train and test"),
    ('{"train": "class00"}', "must map train/val/test to lists of class names"),
    ("not json", "is not valid JSON"),
])
def test_bad_split_files_are_one_line(own, tmp_path, content, message):
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(InvalidDatasetError, match=message) as err:
        load_image_folder(own, image_size=12, cache_dir=tmp_path / "c", split_file=path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_the_cache_is_read_back_and_rebuilt_when_a_file_changes(own, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_image_folder(own, image_size=16, cache_dir=cache)
    files = list((cache / "image-folders").glob("*.npy"))
    assert len(files) == 1 and not list((cache / "image-folders").glob(".*part"))
    calls = []
    real = folder_mod.decode_image
    monkeypatch.setattr(folder_mod, "decode_image", lambda *a: calls.append(1) or real(*a))
    again = load_image_folder(own, image_size=16, cache_dir=cache)
    assert calls == [] and torch.equal(again["train"].images, first["train"].images)  # nothing decoded again
    target = own / "class00" / "000.png"
    Image.new("RGB", (10, 10), (255, 0, 0)).save(target)
    os.utime(target, ns=(1, 1))
    changed = load_image_folder(own, image_size=16, cache_dir=cache)
    assert calls and len(list((cache / "image-folders").glob("*.npy"))) == 1  # rebuilt, the old entry removed
    where = [s for s in changed.splits.values() if "class00" in s.class_names][0]
    assert where.class_images(where.class_names.index("class00"))[0, 0].float().mean() > 250  # the new red image
    load_image_folder(own, image_size=24, cache_dir=cache)  # another size: another cache entry
    assert len(list((cache / "image-folders").glob("*.npy"))) == 2


def test_the_cache_is_memory_mapped_uint8(own, tmp_path):
    pre = ImagePreprocess(16, 3)
    files = folder_mod._class_files(own)
    images, counts = folder_mod.cached_images(own, files, pre, tmp_path / "c")
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and sum(counts) == images.shape[0]


def test_grey_folders_and_mixed_ones(tmp_path):
    grey = image_folder(tmp_path / "grey", {"a": 3, "b": 3, "c": 3}, mode="L")
    ds = load_image_folder(grey, image_size=10, cache_dir=tmp_path / "c", fractions=(1, 0, 0))
    assert ds.preprocess.channels == 1 and ds["train"].images.shape[1:] == (1, 10, 10) and "test" not in ds.splits
    Image.new("RGB", (8, 8)).save(grey / "b" / "colour.png")
    with pytest.raises(InvalidDatasetError, match=r"mixes grey and RGB images .*colour.png is RGB.*pass channels=3"):
        load_image_folder(grey, image_size=10, cache_dir=tmp_path / "c")
    ds = load_image_folder(grey, image_size=10, cache_dir=tmp_path / "c", channels=3, fractions=(1, 0, 0))
    assert ds["train"].images.shape[1] == 3


def test_transparent_and_palette_images_are_read(tmp_path):
    root = tmp_path / "png"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("RGBA", (12, 12), (0, 0, 0, 0)).save(root / "a" / "clear.png")  # transparent: white, as viewers show it
    Image.new("P", (12, 12)).save(root / "b" / "palette.gif")
    ds = load_image_folder(root, image_size=8, channels=3, cache_dir=tmp_path / "c", fractions=(1, 0, 0))
    assert ds["train"].class_images(0).min() == 255


@pytest.mark.parametrize("damage", ["not an image", "truncated"])
def test_corrupt_images_name_the_file_and_leave_no_cache(own, tmp_path, damage):
    bad = own / "class03" / "001.png"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:60])
    else:
        bad.write_text("hello")
    with pytest.raises(InvalidDatasetError, match="is not an image Pillow can read") as err:
        load_image_folder(own, image_size=12, channels=3, cache_dir=tmp_path / "c")
    assert str(bad) in str(err.value) and "remove it or replace it" in str(err.value)
    assert bad.exists()  # never deleted
    assert not [p for p in (tmp_path / "c" / "image-folders").iterdir()]  # the partial cache is gone


def test_folders_without_classes_and_missing_folders(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "x.png")
    (flat / "notes").mkdir()
    (flat / "notes" / "readme.txt").write_text("not an image: ignored")
    with pytest.raises(InvalidDatasetError, match=r"has 0 class folder\(s\) with images: put each class's images"):
        load_image_folder(flat)


def test_a_class_split_checks_its_ragged_layout():
    with pytest.raises(ValueError, match="need counts summing to 5"):
        ClassSplit("x", torch.zeros(5, 1, 4, 4, dtype=torch.uint8), ["a", "b"], counts=torch.tensor([2, 2]))
    split = ClassSplit("x", torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1), ["a", "b"], counts=[2, 3])
    assert split.class_images(1).flatten().tolist() == [2, 3, 4] and split.drawings_per_class == 2


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "nowhere/at/all"], "--dataset nowhere/at/all: neither a dataset"),
    (["--dataset", "omniglot", "--channels", "3"], "--channels is an option of image folders"),
    (["--dataset", "omniglot", "--image-size", "32"], "--image-size: --dataset omniglot has a fixed input size"),
    (["--dataset", "sinusoid", "--model", "resnet12"], "--model: --dataset sinusoid trains an MLP"),
    (["--dataset", "cifar-fs", "--protocol", "lake"], "--protocol is an Omniglot split"),
    (["--dataset", "cifar-fs", "--train-split", "trainval", "--val-tasks", "0"], "--train-split trainval is an Omniglot"),
    (["--dataset", "cifar-fs", "--model", "vgg"], "invalid choice: 'vgg'"),
])
def test_the_command_line_checks_the_dataset_options(argv, message, capsys):
    from metalib.train_cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_run_records_its_image_options_only_where_set(own, tmp_path, monkeypatch, capsys):
    from metalib.checkpoints import load_checkpoint
    from metalib.train_cli import run

    monkeypatch.setenv("METALIB_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = tmp_path / "run.pt"
    argv = ["--dataset", str(own), "--algorithm", "maml", "--image-size", "16", "--ways", "3", "--queries", "2",
            "--steps", "2", "--meta-batch", "2", "--val-tasks", "0", "--eval-tasks", "0",
            "--checkpoint", str(ckpt), "--no-progress"]
    assert run(argv) == 0
    settings = load_checkpoint(ckpt)["run_settings"]
    assert settings["image_size"] == 16 and "model" not in settings and settings["_preprocess"]["channels"] == 3
    assert run([*argv[:-3], "--image-size", "20", "--checkpoint", str(ckpt), "--no-progress"]) == 2  # another run
    assert "image_size: checkpoint 16, now 20" in capsys.readouterr().err


def test_what_is_skipped_is_said_and_old_cache_entries_go(own, tmp_path):
    (own / "class00" / "notes.txt").write_text("not an image")
    (own / "class01" / "more").mkdir()
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\) without an image suffix .*and 1 nested folder"):
        load_image_folder(own, image_size=12, cache_dir=tmp_path / "c")
    entries = list((tmp_path / "c" / "image-folders").glob("*.npy"))
    Image.new("RGB", (9, 9)).save(own / "class02" / "new.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        load_image_folder(own, image_size=12, cache_dir=tmp_path / "c")
    now = list((tmp_path / "c" / "image-folders").glob("*.npy"))
    assert len(entries) == len(now) == 1 and entries != now  # the entry for the old files was replaced


def test_a_missing_split_and_skewed_fractions_are_one_line(own, tmp_path):
    ds = load_image_folder(own, image_size=12, cache_dir=tmp_path / "c", fractions=(1, 0, 1))
    with pytest.raises(InvalidDatasetError, match=r"has no val classes .*--val-tasks 0"):
        ds["val"]
    with pytest.raises(InvalidDatasetError, match="leave no training class"):
        load_image_folder(own, cache_dir=tmp_path / "c", fractions=(0.001, 1, 1.2))


def test_a_resumed_run_on_changed_data_is_refused_and_the_split_has_its_own_seed(own, tmp_path, monkeypatch, capsys):
    from metalib.train_cli import run

    monkeypatch.setenv("METALIB_CACHE_DIR", str(tmp_path / "cache"))
    ckpt = tmp_path / "run.pt"
    argv = ["--dataset", str(own) + "/", "--algorithm", "protonet", "--image-size", "16", "--ways", "3", "--queries",
            "2", "--steps", "1", "--meta-batch", "1", "--val-tasks", "0", "--eval-tasks", "0", "--checkpoint",
            str(ckpt), "--no-progress"]
    assert run(argv) == 0
    assert run([*argv, "--steps", "2"]) == 0  # the same folder (its trailing slash aside): resumed
    (own / "class99").mkdir()
    for i in range(6):
        Image.new("RGB", (8, 8), (i, i, i)).save(own / "class99" / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run([*argv, "--steps", "3"]) == 2
    assert "data: checkpoint" in capsys.readouterr().err  # another class in the folder: another run
    seeded = {s: load_image_folder(own, image_size=12, cache_dir=tmp_path / "c", seed=s)["test"].class_names
              for s in (0, 1)}
    assert seeded[0] != seeded[1]

"""metalib.data: atomic md5-checked downloads, local copies, the 28x28 cache and the splits.

Most tests use a tiny synthetic Omniglot (the expected character counts are patched); the
tests marked by the ``omniglot`` fixture use the real copy and skip when it is absent.
"""
from __future__ import annotations

import errno
import hashlib
import os
import io
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import metalib.data.omniglot as om
import metalib.data.splits as sp
from metalib import paths
from metalib.errors import UserError
from metalib.data import (
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    InvalidDatasetError,
    cache_file,
    default_cache_dir,
    download_file,
    load_omniglot,
    omniglot_splits,
    read_vinyals_split,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ----------------------------------------------------------------------- downloads



def test_download_verifies_and_writes_atomically(tmp_path, served):
    url, payload = served
    dest = tmp_path / "out" / "file.bin"
    assert download_file(url, dest, md5(payload)) == dest
    assert dest.read_bytes() == payload
    assert files_in(dest.parent) == [dest]  # no temp file left


def test_download_keeps_a_verified_file_without_fetching(tmp_path, served):
    url, payload = served
    dest = tmp_path / "file.bin"
    dest.write_bytes(payload)

    def no_network(*args, **kwargs):
        raise AssertionError("should not download a file that is already verified")

    download_file(url, dest, md5(payload), opener=no_network)
    assert dest.read_bytes() == payload


def test_download_md5_mismatch_rejected_and_nothing_left(tmp_path, served):
    url, payload = served
    dest = tmp_path / "out" / "file.bin"
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as err:
        download_file(url, dest, wrong)
    msg = str(err.value)
    assert wrong in msg and md5(payload) in msg and url in msg
    assert files_in(dest.parent) == []


def test_partial_files_are_never_used(tmp_path, served):
    url, payload = served
    dest = tmp_path / "file.bin"
    dest.write_bytes(payload[:1000])  # truncated destination (e.g. copied by hand)
    stale = tmp_path / ".file.bin.deadbeef.part"  # temp file left by a crashed download
    stale.write_bytes(payload[:500])
    # a file download_file did not write is never deleted nor replaced: a one-line refusal
    with pytest.raises(ChecksumError) as err:
        download_file(url, dest, md5(payload))
    msg = str(err.value)
    assert str(dest) in msg and "left untouched: move or delete it" in msg and "\n" not in msg
    assert dest.read_bytes() == payload[:1000] and stale.read_bytes() == payload[:500]
    dest.unlink()  # the fix the message names
    download_file(url, dest, md5(payload))
    assert dest.read_bytes() == payload


def test_download_never_clobbers_a_file_that_appears_meanwhile(tmp_path, served):
    _, payload = served
    dest = tmp_path / "out" / "file.bin"

    def opener(url, timeout):
        dest.write_bytes(b"written by someone else during the download")
        return io.BytesIO(payload)

    with pytest.raises(ChecksumError, match="left untouched"):
        download_file("http://example.invalid/x", dest, md5(payload), opener=opener)
    assert files_in(dest.parent) == [dest]  # no temp file left
    assert dest.read_bytes() == b"written by someone else during the download"


def test_interrupted_download_leaves_nothing(tmp_path, served):
    _, payload = served

    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset")
            return super().read(1000)

    def opener(url, timeout):
        return Broken(payload)

    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DownloadError, match="could not download http://example.invalid/x: connection reset"):
        download_file("http://example.invalid/x", dest, md5(payload), opener=opener)
    assert files_in(dest.parent) == []


def test_unreachable_url_raises_download_error(tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(DownloadError, match="could not download file:///"):
        download_file((tmp_path / "missing.bin").as_uri(), dest, "0" * 32, timeout=1)
    assert files_in(tmp_path) == []



# --------------------------------------------------------------------------- folders


def test_paths_defaults_env_and_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("METALIB_CACHE_DIR", raising=False)
    monkeypatch.delenv("METALIB_DATA_DIR", raising=False)
    assert paths.checkout_root() == REPO_ROOT
    assert paths.cache_dir() == default_cache_dir() == REPO_ROOT / "data"
    assert paths.data_dir() is None and paths.data_dir(tmp_path) == tmp_path
    assert paths.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv("METALIB_CACHE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("METALIB_DATA_DIR", str(tmp_path / "data"))
    assert paths.cache_dir() == tmp_path / "env" and paths.data_dir() == tmp_path / "data"
    assert paths.cache_dir(tmp_path / "arg") == tmp_path / "arg"  # the argument wins
    monkeypatch.delenv("METALIB_CACHE_DIR")
    # an installed copy (no checkout): the user cache folder
    monkeypatch.setattr(paths, "checkout_root", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "metalib"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.cache_dir() == tmp_path / "home" / ".cache" / "metalib"


def test_installed_copy_is_not_a_checkout(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    (site / "metalib" / "data").mkdir(parents=True)
    (site / "pyproject.toml").write_text("")  # even a stray one there does not make a checkout
    monkeypatch.setattr(paths, "__file__", str(site / "metalib" / "paths.py"))
    assert paths.checkout_root() is None


def test_relative_paths_are_tried_from_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("METALIB_DATA_DIR", "tests/fixtures")  # not below tmp_path
    assert paths.data_dir() == REPO_ROOT / "tests" / "fixtures"
    (tmp_path / "tests" / "fixtures").mkdir(parents=True)  # now it exists from the cwd
    assert paths.data_dir() == Path("tests/fixtures")
    assert paths.resolve("nowhere/x") == Path("nowhere/x")


# ------------------------------------------------------------ synthetic Omniglot copy

FAKE = {
    "background": {"Alpha": ["character01", "character02"], "Beta": ["character01"]},
    "evaluation": {"Gamma": ["character01", "character02"]},
}
FAKE_NAMES = ["Alpha/character01", "Alpha/character02", "Beta/character01", "Gamma/character01", "Gamma/character02"]



def fake_png(char: int, drawing: int) -> bytes:
    """105x105 1-bit, black strokes on white like Omniglot: a top bar whose width grows
    with the character, a bottom bar whose width grows with the drawing."""
    im = Image.new("1", (105, 105), 1)
    d = ImageDraw.Draw(im)
    d.rectangle([0, 0, 20 + 15 * char, 40], fill=0)
    d.rectangle([0, 85, 4 + 5 * drawing, 104], fill=0)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def fake_members(part: str) -> dict[str, bytes]:
    files, char = {}, 0 if part == "background" else 3
    for alphabet, chars in FAKE[part].items():
        for c in chars:
            for drawing in reversed(range(20)):  # stored out of order on purpose
                files[f"images_{part}/{alphabet}/{c}/{1000 + char:04d}_{drawing + 1:02d}.png"] = fake_png(char, drawing)
            char += 1
    return files


def write_fake(root: Path, layout: str, drop: str | None = None) -> Path:
    """Write the synthetic copy in one of the accepted layouts; returns the data dir."""
    base = root / "omniglot" if layout.startswith("omniglot") else root
    for part in om._PARTS:
        members = {k: v for k, v in fake_members(part).items() if k != drop}
        if layout.endswith("zip"):
            base.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(base / f"images_{part}.zip", "w") as zf:
                for name, data in members.items():
                    zf.writestr(name, data)
        else:
            for name, data in members.items():
                (base / name).parent.mkdir(parents=True, exist_ok=True)
                (base / name).write_bytes(data)
    return root


def check_fake(data) -> None:
    assert data.images.shape == (5, 20, 28, 28) and data.images.dtype == torch.uint8
    assert data.names == FAKE_NAMES
    assert data.background.tolist() == [True, True, True, False, False]
    assert data.alphabets == ["Alpha", "Beta", "Gamma"]
    img = data.images.int()
    assert (img[:, :, 2, 2] > 240).all() and (img[:, :, 16, 26] < 15).all()  # strokes bright, paper dark
    top = img[:, 0, :9].sum(dim=(1, 2))
    assert (top.diff() > 0).all(), "characters out of order"
    bottom = img[:, :, 24:].sum(dim=(2, 3))
    assert (bottom.diff(dim=1) > 0).all(), "drawings not sorted by drawer number"


@pytest.mark.parametrize("layout", ["omniglot_zip", "flat_zip", "omniglot_folders", "flat_folders"])
def test_local_copy_layouts_build_the_cache(tmp_path, fake_counts, layout):
    data_dir = write_fake(tmp_path / "copy", layout)
    cache = tmp_path / "cache"
    data = load_omniglot(data_dir, cache_dir=cache, download=False)
    check_fake(data)
    assert files_in(cache) == [cache / "cache" / "omniglot28.pt"]  # written atomically, no temp left
    assert cache_file(cache) == cache / "cache" / "omniglot28.pt"


def test_env_var_and_cache_reuse_and_corrupt_cache(tmp_path, fake_counts, monkeypatch):
    data_dir = write_fake(tmp_path / "copy", "omniglot_zip")
    monkeypatch.setenv("METALIB_DATA_DIR", str(data_dir))
    monkeypatch.setenv("METALIB_CACHE_DIR", str(tmp_path / "cache"))
    first = load_omniglot()
    path = tmp_path / "cache" / "cache" / "omniglot28.pt"
    assert path.is_file()
    shutil.rmtree(data_dir)  # the cache alone is enough now
    assert torch.equal(load_omniglot().images, first.images)
    path.write_bytes(b"garbage")  # a corrupt cache is rebuilt, never used
    write_fake(tmp_path / "copy", "flat_zip")
    assert torch.equal(load_omniglot().images, first.images)


def test_download_path_verifies_md5_and_refetches_corrupt_zip(tmp_path, fake_counts, monkeypatch):
    server = write_fake(tmp_path / "server", "flat_zip")
    urls = {p: (server / f"images_{p}.zip").as_uri() for p in om._PARTS}
    md5s = {p: md5((server / f"images_{p}.zip").read_bytes()) for p in om._PARTS}
    monkeypatch.setattr(om, "OMNIGLOT_URLS", urls)
    monkeypatch.setattr(om, "OMNIGLOT_MD5", md5s)
    cache = tmp_path / "cache"
    check_fake(load_omniglot(cache_dir=cache))
    zip_path = cache / "omniglot" / "images_background.zip"
    assert md5(zip_path.read_bytes()) == md5s["background"]
    # a truncated zip in the download folder (metalib only ever writes verified files there)
    # is reported in one line and left untouched; once removed, it is fetched again
    truncated = zip_path.read_bytes()[:1000]
    zip_path.write_bytes(truncated)
    (cache / "cache" / "omniglot28.pt").unlink()
    with pytest.raises(InvalidDatasetError, match="not a readable zip") as err:
        load_omniglot(cache_dir=cache)
    assert str(zip_path) in str(err.value) and "\n" not in str(err.value)
    assert zip_path.read_bytes() == truncated
    zip_path.unlink()
    check_fake(load_omniglot(cache_dir=cache))
    assert md5(zip_path.read_bytes()) == md5s["background"]
    # a server answering with other bytes is rejected
    monkeypatch.setattr(om, "OMNIGLOT_MD5", {**md5s, "evaluation": "f" * 32})
    (cache / "omniglot" / "images_evaluation.zip").unlink()
    (cache / "cache" / "omniglot28.pt").unlink()
    with pytest.raises(DatasetNotFoundError, match="md5 mismatch"):
        load_omniglot(cache_dir=cache)
    assert not (cache / "omniglot" / "images_evaluation.zip").exists()


def test_incomplete_local_copy_is_reported(tmp_path, fake_counts):
    drop = "images_background/Beta/character01/1002_07.png"
    data_dir = write_fake(tmp_path / "copy", "omniglot_zip", drop=drop)
    with pytest.raises(InvalidDatasetError) as err:
        load_omniglot(data_dir, cache_dir=tmp_path / "cache", download=False)
    msg = str(err.value)
    assert "1 characters without exactly 20 drawings (e.g. Beta/character01: 19)" in msg
    assert "images_background.zip" in msg


def test_wrong_character_count_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("METALIB_DATA_DIR", raising=False)
    data_dir = write_fake(tmp_path / "copy", "omniglot_zip")  # real expected counts: 964 + 659
    with pytest.raises(InvalidDatasetError, match=r"3 characters in 2 alphabets \(expected 964 in 30\)"):
        load_omniglot(data_dir, cache_dir=tmp_path / "cache", download=False)


@pytest.mark.parametrize("download", [True, False])
def test_offline_missing_dataset_gives_a_clear_error(tmp_path, monkeypatch, download):
    monkeypatch.delenv("METALIB_DATA_DIR", raising=False)
    # no network: the canonical URLs are unreachable
    monkeypatch.setattr(om, "OMNIGLOT_URLS", {p: (tmp_path / "nowhere" / f"{p}.zip").as_uri() for p in om._PARTS})
    empty, cache = tmp_path / "empty", tmp_path / "cache"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        load_omniglot(empty, cache_dir=cache, download=download)
    msg = str(err.value)
    assert "METALIB_DATA_DIR" in msg
    assert str(empty / "omniglot" / "images_background.zip") in msg
    assert str(cache / "omniglot" / "images_background.zip") in msg
    assert ("could not download" in msg) if download else ("download=False" in msg)
    assert files_in(tmp_path) == []


def offline(monkeypatch) -> None:
    """No network: every URL fails to open (download_file itself still runs)."""

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError(f"offline (test): {url}")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


@pytest.mark.parametrize("download", [True, False])
@pytest.mark.parametrize("layout", ["flat_zip", "flat_folders"])
def test_repacked_copy_in_download_folder_is_used_offline_and_kept(tmp_path, fake_counts, monkeypatch, layout, download):
    """A valid copy whose md5 is not the canonical one (a repacked zip, like the shared
    data's) put into the download folder is used without network and never deleted."""
    cache = tmp_path / "cache"
    downloads = write_fake(cache / "omniglot", layout)
    before = {f: f.read_bytes() for f in files_in(downloads)}
    if layout == "flat_zip":
        assert md5((downloads / "images_background.zip").read_bytes()) != om.OMNIGLOT_MD5["background"]
    offline(monkeypatch)
    check_fake(load_omniglot(cache_dir=cache, download=download))
    assert {f: f.read_bytes() for f in files_in(downloads)} == before


def test_split_file_in_download_folder_is_used_offline_and_kept(tmp_path, monkeypatch):
    monkeypatch.delenv("METALIB_DATA_DIR", raising=False)
    monkeypatch.setattr(sp, "_VINYALS_CHARACTERS", {**sp._VINYALS_CHARACTERS, "val": 1})
    path = tmp_path / "cache" / "omniglot" / "splits" / "vinyals" / "val.txt"
    path.parent.mkdir(parents=True)
    path.write_text("".join(f"Angelic/character01/rot{d:03d}\n" for d in (0, 90, 180, 270)))
    offline(monkeypatch)
    entries = read_vinyals_split("val", cache_dir=tmp_path / "cache")  # md5 is not the canonical one
    assert entries == [("Angelic/character01", d) for d in (0, 90, 180, 270)] and path.is_file()


# ------------------------------------------- corrupt copies, unwritable caches, temp files


def corrupt_member(zip_path: Path, member: str) -> None:
    """Flip a byte in the stored data of ``member`` (its CRC no longer matches)."""
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(member)
    raw = bytearray(zip_path.read_bytes())
    data_start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[data_start + info.compress_size // 2] ^= 0xFF
    zip_path.write_bytes(bytes(raw))


def one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    """The error's message, checked to be a metalib UserError of one line containing ``parts``."""
    msg = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in msg, msg
    for part in parts:
        assert part in msg, (part, msg)
    return msg


BAD_MEMBER = "images_background/Alpha/character02/1001_05.png"


@pytest.mark.parametrize("damage", ["truncated", "bad_crc"])
def test_corrupt_zip_is_one_line_naming_it_and_the_fix(tmp_path, fake_counts, damage):
    data_dir = write_fake(tmp_path / "copy", "flat_zip")
    zip_path = data_dir / "images_background.zip"
    if damage == "truncated":
        zip_path.write_bytes(zip_path.read_bytes()[:3000])
    else:
        corrupt_member(zip_path, BAD_MEMBER)
    before = zip_path.read_bytes()
    with pytest.raises(InvalidDatasetError) as err:
        load_omniglot(data_dir, cache_dir=tmp_path / "cache", download=False)
    msg = one_line(err, str(zip_path), "fresh download of", om.OMNIGLOT_URLS["background"], "left untouched")
    assert ("File is not a zip file" in msg) if damage == "truncated" else (f"{BAD_MEMBER} cannot be read (Bad CRC-32)" in msg)
    assert zip_path.read_bytes() == before and not (tmp_path / "cache" / "cache" / "omniglot28.pt").exists()


@pytest.mark.parametrize("damage", ["not_a_png", "truncated_png"])
@pytest.mark.parametrize("layout", ["flat_zip", "flat_folders"])
def test_corrupt_png_is_one_line_naming_the_member_and_the_fix(tmp_path, fake_counts, layout, damage):
    data_dir = write_fake(tmp_path / "copy", layout)
    png = fake_png(1, 4)
    bad = b"this is no PNG" if damage == "not_a_png" else png[: len(png) // 2]
    if layout == "flat_zip":
        where = data_dir / "images_background.zip"
        members = fake_members("background") | {BAD_MEMBER: bad}
        with zipfile.ZipFile(where, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        member = BAD_MEMBER
    else:
        where = data_dir / "images_background"
        member = str(data_dir / BAD_MEMBER)
        (data_dir / BAD_MEMBER).write_bytes(bad)
    with pytest.raises(InvalidDatasetError) as err:
        load_omniglot(data_dir, cache_dir=tmp_path / "cache", download=False)
    reason = "cannot identify image file" if damage == "not_a_png" else "image file is truncated"
    msg = one_line(err, str(where), f"{member} is not a readable PNG image ({reason})", "fresh download of")
    assert "BytesIO" not in msg


@pytest.mark.parametrize("zip_damage", ["garbage", "bad_crc"])
def test_corrupt_zip_does_not_hide_the_good_folder_next_to_it(tmp_path, fake_counts, zip_damage):
    data_dir = write_fake(tmp_path / "copy", "flat_folders")
    write_fake(tmp_path / "copy", "flat_zip")  # the zips are tried first
    zip_path = data_dir / "images_background.zip"
    if zip_damage == "garbage":
        zip_path.write_bytes(b"garbage")
    else:
        corrupt_member(zip_path, BAD_MEMBER)
    with pytest.warns(UserWarning) as caught:
        check_fake(load_omniglot(data_dir, cache_dir=tmp_path / "cache", download=False))
    msg = str(caught[0].message)
    assert str(zip_path) in msg and f"Using {data_dir / 'images_background'} instead" in msg and "\n" not in msg
    assert (tmp_path / "cache" / "cache" / "omniglot28.pt").is_file()


def test_unwritable_cache_returns_the_data_uncached_with_a_warning(tmp_path, fake_counts, monkeypatch):
    data_dir = write_fake(tmp_path / "copy", "flat_zip")
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    if os.access(cache, os.W_OK):  # root ignores the mode: make the write fail as it would

        def read_only(dest):
            raise PermissionError(errno.EACCES, "Permission denied", str(dest.parent))

        monkeypatch.setattr(om, "open_temp", read_only)
    try:
        with pytest.warns(UserWarning) as caught:
            data = load_omniglot(data_dir, cache_dir=cache, download=False)
    finally:
        cache.chmod(0o755)
    check_fake(data)
    msg = str(caught[0].message)
    assert str(cache / "cache" / "omniglot28.pt") in msg and "Permission denied" in msg and "\n" not in msg
    assert f"make {cache} writable" in msg and "METALIB_CACHE_DIR" in msg
    assert files_in(cache) == []


def test_failed_cache_write_leaves_no_temp_file(tmp_path, fake_counts, monkeypatch):
    data_dir = write_fake(tmp_path / "copy", "flat_zip")
    cache = tmp_path / "cache"

    def disk_full(obj, f):
        f.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(om.torch, "save", disk_full)
    with pytest.warns(UserWarning, match="No space left on device.*free space in"):
        check_fake(load_omniglot(data_dir, cache_dir=cache, download=False))
    assert files_in(cache) == []


def test_stale_temp_files_are_swept_and_nothing_else(tmp_path, fake_counts):
    data_dir = write_fake(tmp_path / "copy", "flat_zip")
    cache = tmp_path / "cache"
    check_fake(load_omniglot(data_dir, cache_dir=cache, download=False))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its PID is gone now
    hour_ago, minutes_ago = time.time() - 2 * 3600, time.time() - 5 * 60
    cache_dir, downloads = cache / "cache", cache / "omniglot"
    downloads.mkdir()
    stale = {  # name -> mtime: left by killed runs, removed
        cache_dir / ".omniglot28.pt.0123456789ab.part": hour_ago,  # before PIDs were in the name
        cache_dir / f".omniglot28.pt.{os.getpid()}-0123456789ab.part": hour_ago,
        cache_dir / f".omniglot28.pt.{dead.pid}-0123456789ab.part": minutes_ago,
        downloads / f".images_background.zip.{dead.pid}-00112233aabb.part": minutes_ago,
    }
    kept = {  # being written now, or not metalib's: kept
        cache_dir / ".omniglot28.pt.0123456789ab.x.part": hour_ago,
        cache_dir / ".omniglot28.pt.0123456789ab.partial": hour_ago,
        cache_dir / ".other.pt.0123456789ab.part": hour_ago,
        cache_dir / "omniglot28.pt.0123456789ab.part": hour_ago,
        cache_dir / f".omniglot28.pt.{os.getpid()}-fedcba987654.part": minutes_ago,
        cache_dir / f".omniglot28.pt.{dead.pid}-fedcba987654.part": time.time(),
        downloads / "notes.part": hour_ago,
    }
    for path, mtime in (stale | kept).items():
        path.write_bytes(b"partial")
        os.utime(path, (mtime, mtime))
    check_fake(load_omniglot(data_dir, cache_dir=cache, download=False))  # from the cache
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)


def test_download_sweeps_its_stale_temp_files(tmp_path, served):
    url, payload = served
    dest = tmp_path / "out" / "file.bin"
    dest.parent.mkdir()
    old, fresh = dest.parent / ".file.bin.0123456789ab.part", dest.parent / ".file.bin.fedcba987654.part"
    for path in (old, fresh):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    download_file(url, dest, md5(payload))
    assert not old.exists() and fresh.exists() and dest.read_bytes() == payload


def write_splits(data_dir: Path, splits: dict[str, list[str]]) -> Path:
    folder = data_dir / "omniglot" / "splits" / "vinyals"
    folder.mkdir(parents=True, exist_ok=True)
    for name, chars in splits.items():
        (folder / f"{name}.txt").write_text("".join(f"{c}/rot{d:03d}\n" for c in chars for d in (0, 90, 180, 270)))
    return folder


def test_overlapping_split_files_are_rejected(tmp_path, fake_counts, monkeypatch):
    monkeypatch.setattr(sp, "_VINYALS_CHARACTERS", {"train": 2, "val": 1, "test": 2, "trainval": 3})
    data_dir = write_fake(tmp_path / "copy", "omniglot_zip")
    train, val, test = FAKE_NAMES[:2], FAKE_NAMES[2:3], FAKE_NAMES[3:]
    folder = write_splits(data_dir, {"train": train, "val": val, "test": test, "trainval": train + val})
    cache = tmp_path / "cache"
    splits = omniglot_splits("vinyals", data_dir=data_dir, cache_dir=cache, download=False)
    assert {k: len(v) for k, v in splits.items()} == {"train": 8, "val": 4, "test": 8, "trainval": 12}
    write_splits(data_dir, {"test": ["Gamma/character01", "Alpha/character02"]})  # a train character
    with pytest.raises(InvalidDatasetError) as err:
        omniglot_splits("vinyals", splits=["train", "test"], data_dir=data_dir, cache_dir=cache, download=False)
    msg = str(err.value)
    assert str(folder / "train.txt") in msg and str(folder / "test.txt") in msg
    assert "Alpha/character02" in msg and "must be disjoint" in msg and "\n" not in msg


def test_unknown_protocol_and_split_names():
    with pytest.raises(ValueError, match="unknown Omniglot protocol 'omni'; valid: vinyals, lake"):
        omniglot_splits("omni")
    with pytest.raises(ValueError, match=r"unknown split\(s\) 'val' for protocol 'lake'; valid: train, test"):
        omniglot_splits("lake", splits=["train", "val"])
    with pytest.raises(ValueError, match="valid: train, val, test, trainval"):
        read_vinyals_split("dev")


def test_malformed_split_file_is_reported(tmp_path):
    folder = tmp_path / "omniglot" / "splits" / "vinyals"
    folder.mkdir(parents=True)
    (folder / "val.txt").write_text("Angelic/character01/rot000\nAngelic/character01/rot045\n")
    with pytest.raises(InvalidDatasetError, match=r"val.txt:2: .*'Angelic/character01/rot045'"):
        read_vinyals_split("val", tmp_path, cache_dir=tmp_path / "cache", download=False)
    (folder / "val.txt").write_text("Angelic/character01/rot000\n")
    with pytest.raises(InvalidDatasetError, match="1 lines for 1 characters, expected 688"):
        read_vinyals_split("val", tmp_path, cache_dir=tmp_path / "cache", download=False)


# ------------------------------------------------------------------------ real data


def test_split_file_download_is_md5_checked(tmp_path, monkeypatch, omniglot_data_dir):
    server = tmp_path / "server"
    server.mkdir()
    shutil.copy(omniglot_data_dir / "omniglot" / "splits" / "vinyals" / "val.txt", server / "val.txt")
    monkeypatch.setattr(sp, "VINYALS_URL", server.as_uri() + "/{name}.txt")
    entries = read_vinyals_split("val", tmp_path / "empty", cache_dir=tmp_path / "cache")
    assert len(entries) == 688 and entries[1] == (entries[0][0], 90)
    assert (tmp_path / "cache" / "omniglot" / "splits" / "vinyals" / "val.txt").is_file()
    with open(server / "val.txt", "a") as f:
        f.write("Angelic/character01/rot000\n")
    with pytest.raises(DatasetNotFoundError, match="md5 mismatch") as err:
        read_vinyals_split("val", tmp_path / "empty", cache_dir=tmp_path / "cache2")
    assert "val.txt" in str(err.value) and sp.VINYALS_MD5["val"] in str(err.value)
    assert files_in(tmp_path / "cache2") == []
    monkeypatch.setattr(sp, "VINYALS_MD5", {**sp.VINYALS_MD5, "val": md5((server / "val.txt").read_bytes())})
    with pytest.raises(InvalidDatasetError, match="expected 688"):
        read_vinyals_split("val", tmp_path / "empty", cache_dir=tmp_path / "cache3")


def test_real_omniglot_cache(omniglot, omniglot_data_dir, monkeypatch):
    assert omniglot.images.shape == (1623, 20, 28, 28) and omniglot.images.dtype == torch.uint8
    assert len(set(omniglot.names)) == 1623 and omniglot.names[0] == "Alphabet_of_the_Magi/character01"
    assert int(omniglot.background.sum()) == 964
    assert len(omniglot.alphabets) == 50
    assert omniglot.images.float().mean() < 40  # bright strokes on a dark background
    assert (omniglot.images.amax(dim=(2, 3)) > 100).all()  # every drawing has strokes
    if "METALIB_CACHE_DIR" not in os.environ:
        assert default_cache_dir() == REPO_ROOT / "data"
    assert cache_file().is_file()
    monkeypatch.delenv("METALIB_DATA_DIR", raising=False)
    start = time.perf_counter()
    again = load_omniglot(download=False)  # from the cache alone
    elapsed = time.perf_counter() - start
    print(f"\nloading the Omniglot cache: {elapsed:.3f} s")
    assert elapsed < 5.0
    assert torch.equal(again.images, omniglot.images) and again.names == omniglot.names


def split_lines(data_dir: Path, name: str) -> list[str]:
    return (data_dir / "omniglot" / "splits" / "vinyals" / f"{name}.txt").read_text().split()


def test_real_vinyals_splits(omniglot, omniglot_data_dir):
    splits = omniglot_splits("vinyals", data_dir=omniglot_data_dir, download=False)
    assert {k: len(v) for k, v in splits.items()} == {"train": 4112, "val": 688, "test": 1692, "trainval": 4800}
    for name, split in splits.items():
        assert split.name == name
        assert split.images.shape == (len(split), 20, 28, 28) and split.images.dtype == torch.uint8
        assert split.class_names == split_lines(omniglot_data_dir, name)
    train, val, test = (set(splits[k].class_names) for k in ("train", "val", "test"))
    assert not (train & val or train & test or val & test)
    assert set(splits["trainval"].class_names) == train | val

    def chars(names):
        return {n.rsplit("/", 1)[0] for n in names}

    assert not (chars(train) & chars(val) or chars(train) & chars(test) or chars(val) & chars(test))
    assert chars(train | val | test) == set(omniglot.names)
    # class images are the character's drawings rotated counter-clockwise by k * 90 degrees
    t = splits["train"]
    for i in (0, 1, 2, 3, 401):
        char, rot = t.class_names[i].rsplit("/", 1)
        k = int(rot[3:]) // 90
        base = omniglot.images[omniglot.index(char)]
        assert torch.equal(t.images[i], torch.rot90(base, k, dims=(-2, -1)))
    ccw = t.images[1, 0]  # rot090 of the first character
    orig = omniglot.images[omniglot.index(t.class_names[0].rsplit("/", 1)[0]), 0]
    assert torch.equal(ccw, orig.T.flip(0))  # counter-clockwise = transpose, then upside down
    assert not torch.equal(ccw, orig.T.flip(1))  # (clockwise would be this)

    plain = omniglot_splits("vinyals", splits=["train", "test"], data_dir=omniglot_data_dir, download=False, rotations=False)
    assert {k: len(v) for k, v in plain.items()} == {"train": 1028, "test": 423}
    assert set(plain["train"].class_names) == chars(train) and "/rot" not in plain["test"].class_names[0]


def test_real_lake_split(omniglot, omniglot_data_dir):
    lake = omniglot_splits("lake", data_dir=omniglot_data_dir, download=False)
    assert {k: len(v) for k, v in lake.items()} == {"train": 964, "test": 659}
    alph = {k: {n.split("/")[0] for n in v.class_names} for k, v in lake.items()}
    assert len(alph["train"]) == 30 and len(alph["test"]) == 20 and not alph["train"] & alph["test"]
    assert torch.equal(lake["test"].images, omniglot.images[~omniglot.background])
    rotated = omniglot_splits("lake", splits=["test"], data_dir=omniglot_data_dir, download=False, rotations=True)
    assert len(rotated["test"]) == 4 * 659 and rotated["test"].class_names[1].endswith("/rot090")


def test_a_split_file_saved_with_a_byte_order_mark_reads_as_without(tmp_path, fake_counts, monkeypatch):
    """Some editors save UTF-8 with a BOM; it used to glue onto the first line ('4112 lines for 1029 characters')."""
    monkeypatch.setattr(sp, "_VINYALS_CHARACTERS", {"train": 2, "val": 1, "test": 2, "trainval": 3})
    data_dir = write_fake(tmp_path / "copy", "omniglot_zip")
    train, val, test = FAKE_NAMES[:2], FAKE_NAMES[2:3], FAKE_NAMES[3:]
    folder = write_splits(data_dir, {"train": train, "val": val, "test": test, "trainval": train + val})
    plain = omniglot_splits("vinyals", splits=["train"], data_dir=data_dir, cache_dir=tmp_path / "cache",
                            download=False)["train"]
    path = folder / "train.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with_bom = omniglot_splits("vinyals", splits=["train"], data_dir=data_dir, cache_dir=tmp_path / "cache",
                               download=False)["train"]
    assert with_bom.class_names == plain.class_names and torch.equal(with_bom.images, plain.images)


def test_a_full_disk_while_caching_omniglot_warns_and_returns_the_decoded_data(tmp_path, fake_counts, tiny_disk):
    """torch's own writer reported a full disk as '[enforce fail at inline_container.cc]' (a RuntimeError), which the
    cache's warning did not catch: the decoded data was lost with a traceback."""
    data_dir = write_fake(tmp_path / "copy", "flat_zip")
    (tiny_disk / "filler").write_bytes(b"x" * 240_000)  # the cache (about 80 KB) no longer fits
    cache = tiny_disk / "cache"
    with pytest.warns(UserWarning, match="No space left on device.*free space in") as caught:
        check_fake(load_omniglot(data_dir, cache_dir=cache, download=False))
    assert "\n" not in str(caught[0].message)
    assert files_in(cache) == []

"""Omniglot (Lake et al., Science 2015): finding the raw data, decoding, the 28x28 cache.

Where the data comes from, in order:

1. the preprocessed cache ``<cache_dir>/cache/omniglot28.pt`` (built once, loads in ~0.1 s);
2. a local copy in ``data_dir`` (argument, else the ``METALIB_DATA_DIR`` env var), as
   ``<dir>/omniglot/images_background.zip`` or ``<dir>/images_background.zip`` or the
   extracted folders ``<dir>[/omniglot]/images_background/<Alphabet>/<characterNN>/*.png``
   (same for ``images_evaluation``);
3. a copy in the download folder ``<cache_dir>/omniglot/``, as ``images_background.zip`` or
   the extracted ``images_background/`` (an earlier download, or a copy put there by hand);
4. the canonical zips, downloaded and md5-verified into ``<cache_dir>/omniglot/``.

Copies found in 2 or 3 may be repacked, so instead of an md5 their content is validated
(30 + 20 alphabets, 964 + 659 characters, 20 drawings each, every image readable). A file
metalib did not write is never deleted nor replaced: an invalid one is reported in one line
with the fix, or, when a later copy in the order above is valid (the extracted folder next
to a corrupt zip, say), skipped with a warning. A cache that cannot be written (read-only
folder, full disk) only costs a warning: the data is returned uncached. The folders are
chosen by :mod:`metalib.paths`; the class splits live in :mod:`metalib.data.splits`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import struct
import time
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .. import paths
from .base import ImagePreprocess, InvalidDatasetError
from .download import find_or_download, open_temp, sweep_stale_temp

__all__ = [
    "OMNIGLOT_MD5",
    "OMNIGLOT_URLS",
    "Omniglot",
    "cache_file",
    "not_found_message",
    "load_omniglot",
]

log = logging.getLogger(__name__)

OMNIGLOT_URLS = {
    "background": "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
    "evaluation": "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
}
OMNIGLOT_MD5 = {
    "background": "68d2efa1b9178cc56df9314c21c6e718",
    "evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}

_PARTS = ("background", "evaluation")
_EXPECTED = {"background": (30, 964), "evaluation": (20, 659)}  # (alphabets, characters)
DRAWINGS = 20
IMAGE_SIZE = 28
#: How a drawing becomes a model input (grey, Lanczos to 28x28, inverted: strokes bright), for new images too.
OMNIGLOT_PREPROCESS = ImagePreprocess(IMAGE_SIZE, 1, resample="lanczos", invert=True)
_CACHE_NAME = "omniglot28.pt"
_CACHE_FORMAT = 1  # bump when preprocessing changes so old caches are rebuilt
#: What reading a zip member or decoding a PNG raises for corrupt bytes.
_CORRUPT = (OSError, EOFError, SyntaxError, ValueError, struct.error, zipfile.BadZipFile, zlib.error)


def cache_file(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the preprocessed 28x28 cache: ``<cache_dir>/cache/omniglot28.pt``."""
    return paths.cache_dir(cache_dir) / "cache" / _CACHE_NAME


# ------------------------------------------------------------------------ dataclass


@dataclass(eq=False)
class Omniglot:
    """All 1623 Omniglot characters x 20 drawings, 28x28, strokes bright (uint8)."""

    images: Tensor  # uint8 [1623, 20, 28, 28]
    names: list[str]  # "Alphabet/characterNN", background characters first
    background: Tensor  # bool [1623], True for images_background characters

    def __post_init__(self) -> None:
        n = len(self.names)
        if self.images.ndim != 4 or self.images.shape[0] != n:
            raise ValueError(
                f"images must be [C, drawings, H, W] with C = len(names) = {n}, "
                f"got shape {tuple(self.images.shape)}"
            )
        if self.background.shape != (n,):
            raise ValueError(f"background must have shape ({n},), got {tuple(self.background.shape)}")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def alphabets(self) -> list[str]:
        """Alphabet names in dataset order (30 background, then 20 evaluation)."""
        return list(dict.fromkeys(name.split("/")[0] for name in self.names))

    def index(self, name: str) -> int:
        """Index of the character ``"Alphabet/characterNN"``."""
        lookup = self.__dict__.get("_lookup")
        if lookup is None:
            lookup = self.__dict__["_lookup"] = {n: i for i, n in enumerate(self.names)}
        try:
            return lookup[name]
        except KeyError:
            raise KeyError(f"no Omniglot character named {name!r}") from None


# ----------------------------------------------------------------------- raw sources


class _Source:
    """One of images_background / images_evaluation, as a zip or an extracted folder."""

    def __init__(self, part: str, path: Path):
        self.part, self.path = part, path
        self.is_zip = path.suffix == ".zip"

    def __repr__(self) -> str:
        return str(self.path)

    def characters(self) -> dict[tuple[str, str], list[str]]:
        """``(alphabet, character) -> sorted member names``, validated against the expected counts."""
        top = f"images_{self.part}"
        found: dict[tuple[str, str], list[str]] = {}
        if self.is_zip:
            with self._open_zip() as zf:
                members = zf.namelist()
            for m in members:
                parts = m.split("/")
                if len(parts) >= 4 and parts[-4] == top and parts[-1].endswith(".png") and "__MACOSX" not in parts:
                    found.setdefault((parts[-3], parts[-2]), []).append(m)
        else:
            for f in self.path.glob("*/*/*.png"):
                found.setdefault((f.parent.parent.name, f.parent.name), []).append(str(f))
        for files in found.values():
            files.sort()  # "<id>_<NN>.png": sorting orders drawings by drawer NN
        self._validate(found)
        return found

    def _validate(self, found: dict[tuple[str, str], list[str]]) -> None:
        n_alpha, n_chars = _EXPECTED[self.part]
        alphabets = {a for a, _ in found}
        bad = {f"{a}/{c}": len(v) for (a, c), v in found.items() if len(v) != DRAWINGS}
        if len(alphabets) == n_alpha and len(found) == n_chars and not bad:
            return
        problems = [
            f"{len(found)} characters in {len(alphabets)} alphabets (expected {n_chars} in {n_alpha})"
        ]
        if bad:
            examples = ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())[:3])
            problems.append(f"{len(bad)} characters without exactly {DRAWINGS} drawings (e.g. {examples})")
        raise self._invalid(
            f"incomplete or not in the canonical layout "
            f"images_{self.part}/<Alphabet>/<characterNN>/<id>_<NN>.png: {'; '.join(problems)}"
        )

    def _open_zip(self) -> zipfile.ZipFile:
        try:
            return zipfile.ZipFile(self.path)
        except _CORRUPT as exc:
            raise self._invalid(f"not a readable zip ({_reason(exc)})") from None

    def _invalid(self, problem: str) -> InvalidDatasetError:
        return InvalidDatasetError(
            f"Omniglot copy {self.path} is {problem}. It was left untouched: replace it with a fresh "
            f"download of {OMNIGLOT_URLS[self.part]} (or a good copy), or move it away."
        )

    def _corrupt(self, member: str, what: str, exc: BaseException) -> InvalidDatasetError:
        return self._invalid(f"corrupt: its {'member' if self.is_zip else 'file'} {member} {what} ({_reason(exc)})")

    def iter_bytes(self, members: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        """``(member, PNG bytes)`` of ``members``, in order (the zip is opened once for all of them);
        an unreadable member raises :class:`InvalidDatasetError` naming it."""
        with contextlib.ExitStack() as stack:
            zf = stack.enter_context(self._open_zip()) if self.is_zip else None
            for m in members:
                try:
                    data = zf.read(m) if zf is not None else Path(m).read_bytes()
                except _CORRUPT as exc:
                    raise self._corrupt(m, "cannot be read", exc) from None
                yield m, data

    def decode(self) -> tuple[list[str], np.ndarray]:
        """Validated and decoded: ``"Alphabet/characterNN"`` names and uint8 ``[chars, 20, 28, 28]``.

        Raises:
            InvalidDatasetError: missing characters or drawings, an unreadable zip, member or image.
        """
        chars = sorted(self.characters().items())
        members = [m for _, files in chars for m in files]
        images = np.empty((len(chars), DRAWINGS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        for i, (member, png) in enumerate(self.iter_bytes(members)):
            try:
                images[i // DRAWINGS, i % DRAWINGS] = _preprocess(png)
            except _CORRUPT as exc:
                raise self._corrupt(member, "is not a readable PNG image", exc) from None
        return [f"{alphabet}/{character}" for (alphabet, character), _ in chars], images


def _reason(exc: BaseException) -> str:
    """The gist of a zip or PIL error, without the object reprs and member names they embed."""
    if isinstance(exc, UnidentifiedImageError):
        return "cannot identify image file"
    text = str(exc).split(" for file ")[0].strip()  # zipfile: "Bad CRC-32 for file 'name'"
    return text or type(exc).__name__


def _local_candidates(root: Path, part: str) -> list[Path]:
    name = f"images_{part}"
    bases = [root / "omniglot", root]
    return [b / f"{name}.zip" for b in bases] + [b / name for b in bases]


def _decode_part(part: str, data_dir: Path | None, cache_dir: Path, download: bool) -> tuple[list[str], np.ndarray]:
    """Names and images of images_``part``, from the first good copy (see the module docstring)."""
    target = cache_dir / "omniglot" / f"images_{part}.zip"
    candidates = _local_candidates(data_dir, part) if data_dir is not None else []
    candidates += [target, target.with_suffix("")]  # the download folder: a zip, or extracted
    what = f"images_{part}"
    return find_or_download(what, candidates, target, OMNIGLOT_URLS[part], OMNIGLOT_MD5[part], download,
                            lambda looked, reason: not_found_message(what, looked, reason, cache_dir),
                            use=lambda path: _Source(part, path).decode())


def not_found_message(what: str, looked: Sequence[Path], reason: str, cache_dir: Path) -> str:
    """Omniglot's "not found" message: what was looked for, where, why not downloaded, and the fix."""
    lines = "\n".join(f"  - {p}" for p in looked)
    return (
        f"Omniglot {what} not found and not downloaded ({reason}). Looked in:\n{lines}\n"
        f"Fix: put images_background.zip and images_evaluation.zip (or the extracted folders), "
        f"and splits/vinyals/*.txt for the Vinyals split, in DIR/omniglot/ and set "
        f"{paths.ENV_DATA}=DIR (or pass data_dir=DIR); or run once with network access and "
        f"download=True to fetch the canonical files into {cache_dir / 'omniglot'}."
    )


# ------------------------------------------------------------------------ preprocessing


def _preprocess(png: bytes) -> np.ndarray:
    """PNG bytes -> uint8 28x28, strokes bright (Omniglot PNGs draw black on white)."""
    with Image.open(io.BytesIO(png)) as im:
        small = im.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    return 255 - np.asarray(small, dtype=np.uint8)


def _build(data_dir: Path | None, cache_dir: Path, download: bool) -> dict:
    # A single process decodes all 32,460 PNGs in ~5 s, so no worker pool.
    decoded = {part: _decode_part(part, data_dir, cache_dir, download) for part in _PARTS}
    names = [name for part in _PARTS for name in decoded[part][0]]
    background = [part == "background" for part in _PARTS for _ in decoded[part][0]]
    return {
        "format": _CACHE_FORMAT,
        "images": torch.from_numpy(np.concatenate([decoded[part][1] for part in _PARTS])),
        "names": names,
        "background": torch.tensor(background, dtype=torch.bool),
    }


def _atomic_save(obj: dict, path: Path) -> None:
    # serialised in memory first: torch's own writer reports a full disk as "[enforce fail at inline_container.cc]"
    # (a RuntimeError), a plain write as the OSError the caller turns into a warning
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    f, tmp = open_temp(path)
    try:
        with f:
            f.write(buffer.getbuffer())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_cache(obj: dict, path: Path) -> None:
    """Write the cache; if that fails (read-only folder, full disk), warn in one line and go on."""
    try:
        _atomic_save(obj, path)
    except OSError as exc:
        folder = next(p for p in path.parents if p.exists())  # the one to fix, when cache/ is missing
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = f"make {folder} writable (e.g. chmod u+w) or set {paths.ENV_CACHE} to a writable folder"
        else:
            fix = f"free space in {folder} or set {paths.ENV_CACHE} to another folder"
        warnings.warn(
            f"Omniglot cache {path} not written ({exc.strerror or exc}): the data was loaded uncached "
            f"and is decoded again next time; to cache it, {fix}.",
            stacklevel=3,
        )


def _load_cache(path: Path) -> Omniglot | None:
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, weights_only=True)
        if obj.get("format") != _CACHE_FORMAT:
            raise ValueError(f"cache format {obj.get('format')}, expected {_CACHE_FORMAT}")
        data = Omniglot(images=obj["images"], names=list(obj["names"]), background=obj["background"])
        expected = (sum(n for _, n in _EXPECTED.values()), DRAWINGS, IMAGE_SIZE, IMAGE_SIZE)
        if tuple(data.images.shape) != expected or data.images.dtype != torch.uint8:
            raise ValueError(f"images {tuple(data.images.shape)} {data.images.dtype}, expected {expected} uint8")
    except Exception as exc:  # corrupt/stale cache: rebuild rather than fail
        log.warning("Omniglot cache %s is unusable (%s); rebuilding it", path, exc)
        return None
    return data


def load_omniglot(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Omniglot:
    """Load all of Omniglot as 28x28 uint8, building the cache on first use.

    Args:
        data_dir: folder with a local copy (see module docstring); default ``METALIB_DATA_DIR``.
        cache_dir: where downloads and ``cache/omniglot28.pt`` go; default see
            :func:`metalib.paths.cache_dir`.
        download: fetch the canonical zips when no copy is found.

    Raises:
        DatasetNotFoundError: no cache, no copy and no download possible; the
            message lists the paths searched and how to fix it.
        InvalidDatasetError: every copy found has missing characters or drawings, or is
            not a readable zip, or holds an unreadable image (it is left untouched).

    Warns when the cache cannot be written (the data is returned uncached), or when a copy
    is invalid but a later one is used. Stale temp files of earlier killed runs are removed.
    """
    cache_root = paths.cache_dir(cache_dir)
    path = cache_root / "cache" / _CACHE_NAME
    for dest in (path, *(cache_root / "omniglot" / f"images_{part}.zip" for part in _PARTS)):
        sweep_stale_temp(dest)
    data = _load_cache(path)
    if data is not None:
        return data
    start = time.perf_counter()
    obj = _build(paths.data_dir(data_dir), cache_root, download)
    _save_cache(obj, path)
    log.info("Omniglot: built %s in %.1f s", path, time.perf_counter() - start)
    return Omniglot(images=obj["images"], names=obj["names"], background=obj["background"])

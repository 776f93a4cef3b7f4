"""Omniglot (Lake et al., Science 2015): loading, 28x28 preprocessing, class splits.

Where the data comes from, in order:

1. the preprocessed cache ``<cache_dir>/cache/omniglot28.pt`` (built once, loads in ~0.1 s);
2. a local copy in ``data_dir`` (argument, else the ``METALIB_DATA_DIR`` env var), as
   ``<dir>/omniglot/images_background.zip`` or ``<dir>/images_background.zip`` or the
   extracted folders ``<dir>[/omniglot]/images_background/<Alphabet>/<characterNN>/*.png``
   (same for ``images_evaluation``). Local copies may be repacked, so instead of an md5
   their content is validated (30 + 20 alphabets, 964 + 659 characters, 20 drawings each);
3. the canonical zips, downloaded and md5-verified into ``<cache_dir>/omniglot/``.

``cache_dir`` defaults to ``METALIB_CACHE_DIR``, else ``<repo>/data`` in a source checkout,
else ``~/.cache/metalib``.
"""

from __future__ import annotations

import io
import logging
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .download import ChecksumError, DownloadError, download_file, file_md5, open_temp

__all__ = [
    "ClassSplit",
    "DatasetNotFoundError",
    "InvalidDatasetError",
    "OMNIGLOT_MD5",
    "OMNIGLOT_URLS",
    "Omniglot",
    "PROTOCOLS",
    "VINYALS_MD5",
    "VINYALS_URL",
    "cache_file",
    "default_cache_dir",
    "load_omniglot",
    "omniglot_splits",
    "read_vinyals_split",
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
VINYALS_URL = (
    "https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/"
    "data/omniglot/splits/vinyals/{name}.txt"
)
VINYALS_MD5 = {
    "test": "43534e6d5f9e74acbb7de1b4874abad8",
    "train": "433d1fcc2b20dcee2983ceb524586f7f",
    "trainval": "888433268015439fd05fb6e9006ead50",
    "val": "78c535fa427b12b6596908376a0b3f34",
}
#: Valid split names per protocol.
PROTOCOLS: dict[str, tuple[str, ...]] = {
    "vinyals": ("train", "val", "test", "trainval"),
    "lake": ("train", "test"),
}

_PARTS = ("background", "evaluation")
_EXPECTED = {"background": (30, 964), "evaluation": (20, 659)}  # (alphabets, characters)
_VINYALS_CHARACTERS = {"train": 1028, "val": 172, "test": 423, "trainval": 1200}
DRAWINGS = 20
IMAGE_SIZE = 28
_CACHE_NAME = "omniglot28.pt"
_CACHE_FORMAT = 1  # bump when preprocessing changes so old caches are rebuilt
_ENV_DATA = "METALIB_DATA_DIR"
_ENV_CACHE = "METALIB_CACHE_DIR"


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is neither cached, nor available locally, nor downloadable."""


class InvalidDatasetError(ValueError):
    """A local copy of the dataset has the wrong content (missing characters/drawings)."""


# ----------------------------------------------------------------------------- paths


def _repo_root() -> Path | None:
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "metalib" / "data").is_dir():
        return root
    return None


def default_cache_dir() -> Path:
    """``METALIB_CACHE_DIR``, else ``<repo>/data`` in a source checkout, else ``~/.cache/metalib``."""
    env = os.environ.get(_ENV_CACHE)
    if env:
        return _resolve(env)
    root = _repo_root()
    if root is not None:
        return root / "data"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "metalib"


def _resolve(path: str | os.PathLike[str]) -> Path:
    """Expand ``~``; a relative path that does not exist from the cwd is tried from the
    repo root, so ``METALIB_DATA_DIR=../shared/data`` works from any folder of a checkout."""
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists():
        root = _repo_root()
        if root is not None and (root / p).exists():
            return (root / p).resolve()
    return p


def _data_dir(data_dir: str | os.PathLike[str] | None) -> Path | None:
    if data_dir is not None:
        return _resolve(data_dir)
    env = os.environ.get(_ENV_DATA)
    return _resolve(env) if env else None


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    return _resolve(cache_dir) if cache_dir is not None else default_cache_dir()


def cache_file(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the preprocessed 28x28 cache: ``<cache_dir>/cache/omniglot28.pt``."""
    return _cache_dir(cache_dir) / "cache" / _CACHE_NAME


# ------------------------------------------------------------------------ dataclasses


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


@dataclass(eq=False)
class ClassSplit:
    """A set of classes for episode sampling: ``images`` uint8 ``[C, 20, 28, 28]``.

    ``class_names`` are ``"Alphabet/characterNN"``, with a ``/rot000`` .. ``/rot270``
    suffix when the split was built with rotations.
    """

    name: str
    images: Tensor
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim < 3 or self.images.shape[0] != len(self.class_names):
            raise ValueError(
                f"split {self.name!r}: images must be [C, drawings, H, W] with "
                f"C = len(class_names) = {len(self.class_names)}, got shape {tuple(self.images.shape)}"
            )

    def __len__(self) -> int:
        return len(self.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def drawings_per_class(self) -> int:
        return int(self.images.shape[1])

    def __repr__(self) -> str:
        return f"ClassSplit(name={self.name!r}, images={tuple(self.images.shape)} {self.images.dtype})"


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
            with zipfile.ZipFile(self.path) as zf:
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
        raise InvalidDatasetError(
            f"Omniglot copy {self.path} is incomplete or not in the canonical layout "
            f"images_{self.part}/<Alphabet>/<characterNN>/<id>_<NN>.png: {'; '.join(problems)}. "
            f"Replace it with the canonical {OMNIGLOT_URLS[self.part]}"
        )

    def iter_bytes(self, members: Sequence[str]) -> Iterator[bytes]:
        """PNG bytes of ``members``, in order (the zip is opened once for all of them)."""
        if self.is_zip:
            with zipfile.ZipFile(self.path) as zf:
                for m in members:
                    yield zf.read(m)
        else:
            for m in members:
                yield Path(m).read_bytes()


def _local_candidates(root: Path, part: str) -> list[Path]:
    name = f"images_{part}"
    bases = [root / "omniglot", root]
    return [b / f"{name}.zip" for b in bases] + [b / name for b in bases]


def _find_source(part: str, data_dir: Path | None, cache_dir: Path, download: bool) -> _Source:
    looked: list[Path] = []
    if data_dir is not None:
        for cand in _local_candidates(data_dir, part):
            looked.append(cand)
            if cand.is_file() if cand.suffix == ".zip" else cand.is_dir():
                log.info("Omniglot: using local copy %s (content-validated; md5 not checked)", cand)
                return _Source(part, cand)

    target = cache_dir / "omniglot" / f"images_{part}.zip"
    looked.append(target)
    url, md5 = OMNIGLOT_URLS[part], OMNIGLOT_MD5[part]
    if not download:
        if target.is_file():
            if file_md5(target) == md5:
                return _Source(part, target)
            reason = f"{target} exists but its md5 is not {md5} (partial or corrupt download; delete it)"
        else:
            reason = "download=False"
        raise DatasetNotFoundError(_not_found_message(f"images_{part}", looked, reason, cache_dir))
    try:
        download_file(url, target, md5)
    except (DownloadError, ChecksumError) as exc:
        raise DatasetNotFoundError(_not_found_message(f"images_{part}", looked, str(exc), cache_dir)) from exc
    return _Source(part, target)


def _not_found_message(what: str, looked: Sequence[Path], reason: str, cache_dir: Path) -> str:
    lines = "\n".join(f"  - {p}" for p in looked)
    return (
        f"Omniglot {what} not found and not downloaded ({reason}). Looked in:\n{lines}\n"
        f"Fix: put images_background.zip and images_evaluation.zip (or the extracted folders), "
        f"and splits/vinyals/*.txt for the Vinyals split, in DIR/omniglot/ and set "
        f"{_ENV_DATA}=DIR (or pass data_dir=DIR); or run once with network access and "
        f"download=True to fetch the canonical files into {cache_dir / 'omniglot'}."
    )


# ------------------------------------------------------------------------ preprocessing


def _preprocess(png: bytes) -> np.ndarray:
    """PNG bytes -> uint8 28x28, strokes bright (Omniglot PNGs draw black on white)."""
    with Image.open(io.BytesIO(png)) as im:
        small = im.convert("L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    return 255 - np.asarray(small, dtype=np.uint8)


def _build(sources: dict[str, _Source]) -> dict:
    # A single process decodes all 32,460 PNGs in ~5 s, so no worker pool.
    names: list[str] = []
    background: list[bool] = []
    num_chars = sum(n for _, n in _EXPECTED.values())  # sources are validated against these
    images = np.empty((num_chars, DRAWINGS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    row = 0
    for part in _PARTS:
        source = sources[part]
        chars = sorted(source.characters().items())
        members = [m for _, files in chars for m in files]
        for i, png in enumerate(source.iter_bytes(members)):
            images[row + i // DRAWINGS, i % DRAWINGS] = _preprocess(png)
        names += [f"{alphabet}/{character}" for (alphabet, character), _ in chars]
        background += [part == "background"] * len(chars)
        row += len(chars)
    return {
        "format": _CACHE_FORMAT,
        "images": torch.from_numpy(images),
        "names": names,
        "background": torch.tensor(background, dtype=torch.bool),
    }


def _atomic_save(obj: dict, path: Path) -> None:
    f, tmp = open_temp(path)
    try:
        with f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
            :func:`default_cache_dir`.
        download: fetch the canonical zips when no local copy is found.

    Raises:
        DatasetNotFoundError: no cache, no local copy and no download possible; the
            message lists the paths searched and how to fix it.
        InvalidDatasetError: a local copy has missing characters or drawings.
    """
    cache_root = _cache_dir(cache_dir)
    path = cache_root / "cache" / _CACHE_NAME
    data = _load_cache(path)
    if data is not None:
        return data
    local = _data_dir(data_dir)
    sources = {part: _find_source(part, local, cache_root, download) for part in _PARTS}
    start = time.perf_counter()
    obj = _build(sources)
    _atomic_save(obj, path)
    log.info("Omniglot: built %s in %.1f s", path, time.perf_counter() - start)
    return Omniglot(images=obj["images"], names=obj["names"], background=obj["background"])


# ------------------------------------------------------------------------------ splits


def read_vinyals_split(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> list[tuple[str, int]]:
    """Read a Vinyals split file as ``[("Alphabet/characterNN", rotation_degrees), ...]``.

    Looks in ``<data_dir>/omniglot/splits/vinyals/<name>.txt`` and
    ``<data_dir>/splits/vinyals/<name>.txt`` (content-validated), else downloads the
    reference file (md5-verified) to ``<cache_dir>/omniglot/splits/vinyals/``.
    """
    if name not in PROTOCOLS["vinyals"]:
        raise ValueError(f"unknown Vinyals split {name!r}; valid: {', '.join(PROTOCOLS['vinyals'])}")
    local = _data_dir(data_dir)
    cache_root = _cache_dir(cache_dir)
    looked: list[Path] = []
    path: Path | None = None
    if local is not None:
        for base in (local / "omniglot", local):
            cand = base / "splits" / "vinyals" / f"{name}.txt"
            looked.append(cand)
            if cand.is_file():
                path = cand
                break
    if path is None:
        target = cache_root / "omniglot" / "splits" / "vinyals" / f"{name}.txt"
        looked.append(target)
        if download:
            try:
                path = download_file(VINYALS_URL.format(name=name), target, VINYALS_MD5[name])
            except (DownloadError, ChecksumError) as exc:
                raise DatasetNotFoundError(
                    _not_found_message(f"split file {name}.txt", looked, str(exc), cache_root)
                ) from exc
        elif target.is_file() and file_md5(target) == VINYALS_MD5[name]:
            path = target
        else:
            raise DatasetNotFoundError(
                _not_found_message(f"split file {name}.txt", looked, "download=False", cache_root)
            )
    return _parse_split(path, name)


def _parse_split(path: Path, name: str) -> list[tuple[str, int]]:
    entries: list[tuple[str, int]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split("/")
        if len(parts) != 3 or parts[2] not in ("rot000", "rot090", "rot180", "rot270"):
            raise InvalidDatasetError(
                f"{path}:{lineno}: expected 'Alphabet/characterNN/rotDDD' with DDD in "
                f"000/090/180/270, got {line!r}"
            )
        entries.append((f"{parts[0]}/{parts[1]}", int(parts[2][3:])))
    chars = {c for c, _ in entries}
    expected = _VINYALS_CHARACTERS[name]
    if len(chars) != expected or len(entries) != 4 * expected or len(set(entries)) != len(entries):
        raise InvalidDatasetError(
            f"{path}: {len(entries)} lines for {len(chars)} characters, expected {4 * expected} "
            f"distinct lines (4 rotations x {expected} characters); replace it with "
            f"{VINYALS_URL.format(name=name)}"
        )
    return entries


def _make_split(name: str, data: Omniglot, entries: Sequence[tuple[str, int]], suffix: bool) -> ClassSplit:
    try:
        idx = torch.tensor([data.index(c) for c, _ in entries], dtype=torch.long)
    except KeyError as exc:
        raise InvalidDatasetError(f"split {name!r} names a character missing from the dataset: {exc}") from None
    quarter_turns = torch.tensor([deg // 90 for _, deg in entries], dtype=torch.long)
    images = torch.empty((len(entries), *data.images.shape[1:]), dtype=data.images.dtype)
    for k in range(4):
        pos = (quarter_turns == k).nonzero().squeeze(1)
        if len(pos):
            # k quarter turns counter-clockwise (row 0 = top of the image)
            images[pos] = torch.rot90(data.images[idx[pos]], k, dims=(-2, -1))
    names = [f"{c}/rot{deg:03d}" if suffix else c for c, deg in entries]
    return ClassSplit(name=name, images=images, class_names=names)


def omniglot_splits(
    protocol: str = "vinyals",
    *,
    splits: Sequence[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    rotations: bool | None = None,
) -> dict[str, ClassSplit]:
    """Omniglot class splits as ``{split_name: ClassSplit}``.

    Protocols:
        ``"vinyals"``: the Matching/Prototypical Networks split; keys train (1028
            characters), val (172), test (423), trainval (train + val). With rotations
            (default) each character gives 4 classes rotated by 0/90/180/270 degrees:
            4112 / 688 / 1692 / 4800 classes.
        ``"lake"``: Lake et al.'s background (train, 30 alphabets, 964 characters) vs
            evaluation (test, 20 alphabets, 659 characters). There is no validation split
            (the protocol has none; use "vinyals" if you need one). Rotations default to off.

    Rotation by k*90 degrees is ``torch.rot90(image, k, dims=(-2, -1))``: counter-clockwise
    as displayed. With rotations every class name ends in ``/rotDDD`` (also ``/rot000``);
    ``rotations=False`` keeps only the unrotated characters, named ``Alphabet/characterNN``.

    Args:
        splits: which splits to build (default all of the protocol's); saves memory.
        data_dir, cache_dir, download: as in :func:`load_omniglot`.
        rotations: None = the protocol's default (vinyals True, lake False).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown Omniglot protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    valid = PROTOCOLS[protocol]
    wanted = tuple(valid if splits is None else splits)
    unknown = [s for s in wanted if s not in valid]
    if unknown:
        raise ValueError(
            f"unknown split(s) {', '.join(map(repr, unknown))} for protocol {protocol!r}; "
            f"valid: {', '.join(valid)}"
        )
    if rotations is None:
        rotations = protocol == "vinyals"
    data = load_omniglot(data_dir, cache_dir=cache_dir, download=download)
    out: dict[str, ClassSplit] = {}
    for split in wanted:
        if protocol == "vinyals":
            entries = read_vinyals_split(split, data_dir, cache_dir=cache_dir, download=download)
        else:
            in_split = data.background if split == "train" else ~data.background
            entries = [(n, deg) for n, keep in zip(data.names, in_split.tolist()) if keep for deg in (0, 90, 180, 270)]
        if not rotations:
            entries = [(c, deg) for c, deg in entries if deg == 0]
        out[split] = _make_split(split, data, entries, suffix=rotations)
    return out

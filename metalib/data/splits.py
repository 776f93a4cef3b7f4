"""Omniglot class splits: Vinyals et al.'s split files and Lake et al.'s background/evaluation.

Split files are found like the images (see :mod:`metalib.data.omniglot`): in
``<data_dir>[/omniglot]/splits/vinyals/<name>.txt``, else in the download folder
``<cache_dir>/omniglot/splits/vinyals/``, else downloaded (md5-verified) there. Their content
is checked (format, 4 rotations x the expected number of characters) and the splits that
must be disjoint (train, val, test; trainval and test) are checked to share no character.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Sequence

import torch

from ..errors import ArgumentError
from .. import paths
from .base import ClassSplit, InvalidDatasetError
from .download import find_or_download
from .omniglot import OMNIGLOT_PREPROCESS, Omniglot, load_omniglot, not_found_message

__all__ = ["PROTOCOLS", "VINYALS_MD5", "VINYALS_URL", "omniglot_splits", "read_vinyals_split"]

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

_VINYALS_CHARACTERS = {"train": 1028, "val": 172, "test": 423, "trainval": 1200}
_MAY_SHARE = {frozenset(("train", "trainval")), frozenset(("val", "trainval"))}  # trainval = train + val
_ROTATIONS = (0, 90, 180, 270)

Entries = list[tuple[str, int]]  # ("Alphabet/characterNN", rotation in degrees)


def read_vinyals_split(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
) -> Entries:
    """Read a Vinyals split file as ``[("Alphabet/characterNN", rotation_degrees), ...]``.

    Looks in ``<data_dir>/omniglot/splits/vinyals/<name>.txt``,
    ``<data_dir>/splits/vinyals/<name>.txt`` and ``<cache_dir>/omniglot/splits/vinyals/``
    (content-validated), else downloads the reference file (md5-verified) to the latter.
    """
    return _parse_split(_split_file(name, data_dir, cache_dir, download), name)


def _split_file(
    name: str, data_dir: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None, download: bool
) -> Path:
    if name not in PROTOCOLS["vinyals"]:
        raise ArgumentError(f"unknown Vinyals split {name!r}; valid: {', '.join(PROTOCOLS['vinyals'])}")
    local = paths.data_dir(data_dir)
    cache_root = paths.cache_dir(cache_dir)
    relative = Path("splits") / "vinyals" / f"{name}.txt"
    target = cache_root / "omniglot" / relative
    candidates = [] if local is None else [local / "omniglot" / relative, local / relative]
    candidates.append(target)
    what = f"split file {name}.txt"
    return find_or_download(what, candidates, target, VINYALS_URL.format(name=name), VINYALS_MD5[name], download,
                            lambda looked, reason: not_found_message(what, looked, reason, cache_root))


def _parse_split(path: Path, name: str) -> Entries:
    entries: Entries = []
    # utf-8-sig: a byte-order mark (as some editors save) is not part of the first line
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
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


def _check_disjoint(files: dict[str, Path], entries: dict[str, Entries]) -> None:
    """Raise InvalidDatasetError when two splits that must be disjoint share a character."""
    chars = {split: {c for c, _ in e} for split, e in entries.items()}
    for a, b in itertools.combinations(chars, 2):
        shared = sorted(chars[a] & chars[b])
        if shared and frozenset((a, b)) not in _MAY_SHARE:
            more = f" (and {len(shared) - 1} more)" if len(shared) > 1 else ""
            raise InvalidDatasetError(
                f"Omniglot split files {files[a]} and {files[b]} both contain {shared[0]}{more}, but "
                f"{a} and {b} must be disjoint: replace them with {VINYALS_URL.format(name='<split>')}"
            )


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
    return ClassSplit(name=name, images=images, class_names=names, preprocess=OMNIGLOT_PREPROCESS)


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
            4112 / 688 / 1692 / 4800 classes. The split files read are checked to be
            disjoint (train, val and test; trainval and test).
        ``"lake"``: Lake et al.'s background (train, 30 alphabets, 964 characters) vs
            evaluation (test, 20 alphabets, 659 characters). There is no validation split
            (the protocol has none; use "vinyals" if you need one). Rotations default to off.

    Rotation by k*90 degrees is ``torch.rot90(image, k, dims=(-2, -1))``: counter-clockwise
    as displayed. With rotations every class name ends in ``/rotDDD`` (also ``/rot000``);
    ``rotations=False`` keeps only the unrotated characters, named ``Alphabet/characterNN``.

    Args:
        splits: which splits to build (default all of the protocol's); saves memory.
        data_dir, cache_dir, download: as in :func:`metalib.data.load_omniglot`.
        rotations: None = the protocol's default (vinyals True, lake False).
    """
    if protocol not in PROTOCOLS:
        raise ArgumentError(f"unknown Omniglot protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    valid = PROTOCOLS[protocol]
    wanted = tuple(valid if splits is None else splits)
    unknown = [s for s in wanted if s not in valid]
    if unknown:
        raise ArgumentError(
            f"unknown split(s) {', '.join(map(repr, unknown))} for protocol {protocol!r}; "
            f"valid: {', '.join(valid)}"
        )
    if rotations is None:
        rotations = protocol == "vinyals"
    data = load_omniglot(data_dir, cache_dir=cache_dir, download=download)
    if protocol == "vinyals":
        files = {split: _split_file(split, data_dir, cache_dir, download) for split in wanted}
        entries = {split: _parse_split(path, split) for split, path in files.items()}
        _check_disjoint(files, entries)
    else:
        entries = {}
        for split in wanted:
            in_split = data.background if split == "train" else ~data.background
            entries[split] = [(n, deg) for n, keep in zip(data.names, in_split.tolist()) if keep for deg in _ROTATIONS]
    out: dict[str, ClassSplit] = {}
    for split in wanted:
        chosen = entries[split] if rotations else [(c, deg) for c, deg in entries[split] if deg == 0]
        out[split] = _make_split(split, data, chosen, suffix=rotations)
    return out

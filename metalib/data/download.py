"""Checksum-verified, atomic file downloads that never delete or replace an existing file.

A file only ever appears at its destination path after its md5 has been verified, so a
crash mid-download leaves at most a ``.<name>.<pid>-<random>.part`` temp file that is never
read back, and that :func:`sweep_stale_temp` removes on a later start. A file already at the
destination with another md5 was not written here (a copy put there by hand, say) and is left
untouched: the download is refused with a message naming it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
import urllib.request
from pathlib import Path
import warnings
from typing import BinaryIO, Callable, Sequence, TypeVar

from ..paths import process_running
from .base import DatasetNotFoundError, InvalidDatasetError

__all__ = ["ChecksumError", "DownloadError", "download_file", "file_md5", "find_or_download", "open_temp",
           "sweep_stale_temp"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_CHUNK = 1 << 20
#: A temp file last written this long ago is abandoned (a write refreshes its mtime continuously).
STALE_AFTER_S = 3600.0
#: ... or this long ago, when the process named in it no longer runs on this machine (the grace
#: covers a cache folder shared with another machine, where that PID means nothing).
DEAD_WRITER_AFTER_S = 120.0

#: Signature of the function used to open URLs; tests may pass their own.
Opener = Callable[..., BinaryIO]


class DownloadError(OSError):
    """A URL could not be fetched (no network, HTTP error, timeout...)."""


class ChecksumError(ValueError):
    """Downloaded bytes, or a file already at the destination, do not have the expected md5."""


def file_md5(path: str | os.PathLike[str]) -> str:
    """Return the hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def open_temp(dest: Path) -> tuple[BinaryIO, Path]:
    """Create a new ``.<name>.<pid>-<random>.part`` file next to ``dest`` for an atomic write,
    first removing stale ones a killed run left (:func:`sweep_stale_temp`).

    Unlike ``tempfile.mkstemp`` the file gets the usual ``0666 & ~umask`` permissions,
    so it can be ``os.replace``-d onto ``dest`` as is. The caller removes it if the write fails.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temp(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{secrets.token_hex(6)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return os.fdopen(fd, "wb"), tmp


def sweep_stale_temp(dest: Path) -> list[Path]:
    """Remove the stale temp files :func:`open_temp` made for ``dest``; returns those removed.

    Only names of exactly that pattern (``.<dest name>.[<pid>-]<12 hex digits>.part``) are
    considered, and only those last written over :data:`STALE_AFTER_S` ago, or over
    :data:`DEAD_WRITER_AFTER_S` ago by a process that no longer runs. Files that cannot be
    removed (a read-only folder) are left as they are.
    """
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.(?:(\d+)-)?[0-9a-f]{{12}}\.part")
    removed = []
    now = time.time()
    for tmp in dest.parent.glob(f".{dest.name}.*.part"):
        match = pattern.fullmatch(tmp.name)
        if match is None:
            continue
        try:
            age = now - tmp.lstat().st_mtime
            pid = match.group(1)
            if age > STALE_AFTER_S or (age > DEAD_WRITER_AFTER_S and pid is not None and not process_running(int(pid))):
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            continue
    if removed:
        log.info("removed %d stale temp file(s) of %s: %s", len(removed), dest, ", ".join(p.name for p in removed))
    return removed


    return True


def download_file(
    url: str,
    dest: str | os.PathLike[str],
    md5: str,
    *,
    timeout: float = 60.0,
    opener: Opener | None = None,
) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already exists with the right md5.

    The bytes go to a temp file next to ``dest`` that is linked to ``dest`` (renamed on file
    systems without hard links) only after its md5 matched, so readers never see a partial
    file. An existing ``dest`` with another md5 is never deleted nor replaced (this function
    only ever leaves verified files there, so someone else put it there): ``ChecksumError``.
    ``opener(url, timeout=...)`` defaults to :func:`urllib.request.urlopen` (which also
    handles ``file://`` URLs).

    Raises:
        DownloadError: the URL could not be read; nothing is left behind.
        ChecksumError: the downloaded bytes have the wrong md5 (nothing is left behind),
            or ``dest`` already holds other bytes (left untouched, nothing is fetched).
    """
    dest = Path(dest)
    md5 = md5.lower()
    sweep_stale_temp(dest)
    if dest.exists() and _verified(dest, md5, url):
        return dest

    out_file, tmp = open_temp(dest)
    open_url = opener if opener is not None else urllib.request.urlopen
    try:
        digest = hashlib.md5()
        with out_file as out:
            try:
                with open_url(url, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(_CHUNK), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except OSError as exc:  # URLError, HTTPError, timeouts are all OSError
                raise DownloadError(f"could not download {url}: {exc}") from exc
        actual = digest.hexdigest()
        if actual != md5:
            raise ChecksumError(
                f"md5 mismatch for {url}: expected {md5}, got {actual}; the download was "
                "discarded. Retry, or check that the URL still serves the original file."
            )
        try:
            os.link(tmp, dest)  # unlike os.replace, never clobbers a file that appeared meanwhile
        except FileExistsError:
            _verified(dest, md5, url)  # e.g. a concurrent download of the same file
        except OSError:  # a file system without hard links
            os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _verified(dest: Path, md5: str, url: str) -> bool:
    """True if the existing ``dest`` has ``md5``; else ChecksumError, leaving it untouched."""
    actual = file_md5(dest) if dest.is_file() else "none (not a file)"
    if actual != md5:
        raise ChecksumError(
            f"{dest} already exists with md5 {actual}, not the expected {md5}; it was left "
            f"untouched: move or delete it, then retry to download {url} there."
        )
    return True


def find_or_download(
    what: str, candidates: Sequence[Path], target: Path, url: str, md5: str, download: bool,
    not_found: Callable[[Sequence[Path], str], str], use: Callable[[Path], T] = Path,  # type: ignore[assignment]
) -> T:
    """``use(path)`` of the first of ``candidates`` (``target`` among them) that exists and that
    ``use`` accepts, else of ``url`` downloaded to ``target``. ``use`` (default: the path itself)
    validates or reads the content: an md5 is only checked on download.

    A path with a suffix (``.zip``, ``.txt``) must be a file, one without a folder. A copy
    ``use`` rejects with :class:`InvalidDatasetError` is skipped with a warning when a later one
    is good (the extracted folder next to a corrupt zip); nothing found is ever deleted or replaced.
    ``not_found(looked, reason)`` words the error when nothing is found: the dataset's own fix.

    Raises:
        InvalidDatasetError: every copy found is invalid (the error of the first one).
        DatasetNotFoundError: nothing found and the download is off or failed; the message
            lists every path looked at and the fix.
    """
    looked = list(candidates) if target in candidates else [*candidates, target]
    rejected: list[InvalidDatasetError] = []
    for cand in looked:
        if not (cand.is_file() if cand.suffix else cand.is_dir()):
            continue
        try:
            result = use(cand)
        except InvalidDatasetError as exc:
            rejected.append(exc)
            continue
        if rejected:
            warnings.warn(f"{rejected[0]} Using {cand} instead.", stacklevel=3)
        if cand != target:
            log.info("%s: using local copy %s (content-validated; md5 not checked)", what, cand)
        return result
    if rejected:
        raise rejected[0]
    if not download:
        raise DatasetNotFoundError(not_found(looked, "download=False"))
    try:
        path = download_file(url, target, md5)
    except (OSError, ChecksumError) as exc:  # DownloadError, or a download folder that is not writable
        raise DatasetNotFoundError(not_found(looked, str(exc))) from exc
    return use(path)

"""Checksum-verified, atomic file downloads that never delete or replace an existing file.

A file only ever appears at its destination path after its md5 has been verified, so a
crash mid-download leaves at most a ``*.part`` temp file that is never read back. A file
already at the destination with another md5 was not written here (a copy put there by
hand, say) and is left untouched: the download is refused with a message naming it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable

__all__ = ["ChecksumError", "DownloadError", "download_file", "file_md5", "open_temp"]

_CHUNK = 1 << 20

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
    """Create a new ``.<name>.<random>.part`` file next to ``dest`` for an atomic write.

    Unlike ``tempfile.mkstemp`` the file gets the usual ``0666 & ~umask`` permissions,
    so it can be ``os.replace``-d onto ``dest`` as is.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    return os.fdopen(fd, "wb"), tmp


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

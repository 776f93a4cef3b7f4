"""Datasets for metalib: Omniglot loading, preprocessing, class splits and downloads.

``base`` (ClassSplit, errors), ``download`` (atomic md5-checked downloads), ``omniglot``
(finding, decoding and caching the images), ``splits`` (Vinyals and Lake class splits);
the folders used are chosen by :mod:`metalib.paths`.
"""

from ..paths import default_cache_dir
from .base import ClassSplit, DatasetNotFoundError, InvalidDatasetError
from .download import ChecksumError, DownloadError, download_file, file_md5
from .omniglot import Omniglot, cache_file, load_omniglot
from .splits import PROTOCOLS, omniglot_splits, read_vinyals_split

__all__ = [
    "PROTOCOLS",
    "ChecksumError",
    "ClassSplit",
    "DatasetNotFoundError",
    "DownloadError",
    "InvalidDatasetError",
    "Omniglot",
    "cache_file",
    "default_cache_dir",
    "download_file",
    "file_md5",
    "load_omniglot",
    "omniglot_splits",
    "read_vinyals_split",
]

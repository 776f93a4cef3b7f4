"""Datasets for metalib: Omniglot loading, preprocessing, class splits and downloads."""

from .download import ChecksumError, DownloadError, download_file, file_md5
from .omniglot import (
    PROTOCOLS,
    ClassSplit,
    DatasetNotFoundError,
    InvalidDatasetError,
    Omniglot,
    cache_file,
    default_cache_dir,
    load_omniglot,
    omniglot_splits,
    read_vinyals_split,
)

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

"""Datasets for metalib: Omniglot, your own image folders and the natural-image benchmarks.

``base`` (ClassSplit, FewShotDataset, ImagePreprocess, errors), ``download`` (atomic md5-checked downloads),
``omniglot`` (finding, decoding and caching the images), ``splits`` (Vinyals and Lake class splits), ``images``
(decoding and normalising image files), ``folder`` (a folder with one sub-folder per class), ``cifar100``
(CIFAR-FS, FC100), ``miniimagenet``, ``cub``, and ``benchmarks`` (them all by name, with their published
splits); the folders used are chosen by :mod:`metalib.paths`.
"""

from ..paths import default_cache_dir
from .base import ClassSplit, DatasetNotFoundError, FewShotDataset, ImagePreprocess, InvalidDatasetError
from .benchmarks import BENCHMARKS, is_benchmark, load_benchmark, load_dataset, published_split
from .folder import load_image_folder
from .images import decode_image, to_model_input
from .download import ChecksumError, DownloadError, download_file, file_md5
from .omniglot import OMNIGLOT_PREPROCESS, Omniglot, cache_file, load_omniglot
from .splits import PROTOCOLS, omniglot_splits, read_vinyals_split

__all__ = [
    "BENCHMARKS",
    "OMNIGLOT_PREPROCESS",
    "is_benchmark",
    "FewShotDataset",
    "ImagePreprocess",
    "decode_image",
    "load_benchmark",
    "load_dataset",
    "load_image_folder",
    "published_split",
    "to_model_input",
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

"""What every dataset shares: a named set of classes (:class:`ClassSplit`) and the errors."""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, field
from typing import BinaryIO, Sequence

import torch
from torch import Tensor

from ..errors import UserError

__all__ = ["ClassSplit", "DatasetNotFoundError", "FewShotDataset", "ImagePreprocess", "InvalidDatasetError", "one_line",
           "safe_unpickle"]


def one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's message on one line, shortened: for the one-line errors that quote a library's reason."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class DatasetNotFoundError(UserError, FileNotFoundError):
    """The dataset is neither cached, nor available locally, nor downloadable."""


class InvalidDatasetError(UserError, ValueError):
    """A copy of the dataset has the wrong content (missing classes or drawings, bad split files,
    a corrupt zip or image); the message names the file and the fix in one line."""


_RESAMPLING = ("lanczos", "bilinear", "bicubic", "box", "nearest")


@dataclass(frozen=True)
class ImagePreprocess:
    """How an image becomes a model input: ``size`` x ``size`` pixels, ``channels`` 1 (grey) or 3 (RGB),
    resized with ``resample``, inverted when ``invert`` (Omniglot's strokes become bright), scaled to [0, 1]
    and normalised per channel with ``mean`` and ``std`` (computed on the training classes)."""

    size: int
    channels: int
    resample: str = "lanczos"
    invert: bool = False
    mean: tuple[float, ...] = field(default=())
    std: tuple[float, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 4:
            raise ValueError(f"image size must be an integer >= 4, got {self.size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels!r}")
        if self.resample not in _RESAMPLING:
            raise ValueError(f"resample must be one of {_RESAMPLING}, got {self.resample!r}")
        mean = tuple(float(m) for m in self.mean) or (0.0,) * self.channels
        std = tuple(float(s) for s in self.std) or (1.0,) * self.channels
        if len(mean) != self.channels or len(std) != self.channels or min(std) <= 0:
            raise ValueError(f"mean and std need {self.channels} value(s) each, std > 0; got {mean}, {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def with_stats(self, mean: Sequence[float], std: Sequence[float]) -> "ImagePreprocess":
        """The same preprocessing with this normalisation."""
        return ImagePreprocess(self.size, self.channels, self.resample, self.invert, tuple(mean), tuple(std))

    def as_dict(self) -> dict:
        """A JSON-able dict (for checkpoints and manifests)."""
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "ImagePreprocess":
        """The preprocessing :meth:`as_dict` wrote."""
        return cls(**{**d, "mean": tuple(d.get("mean", ())), "std": tuple(d.get("std", ()))})


@dataclass(eq=False)
class ClassSplit:
    """A set of classes for episode sampling.

    Dense (every class the same size, as Omniglot): ``images`` ``[C, drawings, H, W]`` or
    ``[C, drawings, channels, H, W]``. Ragged (classes of any size, as a user's folder): ``images``
    ``[total, channels, H, W]`` with the classes one after another and ``counts`` ``[C]`` their sizes.
    uint8 images are pixels 0..255; ``preprocess`` (when known) says how they were made and how they are
    normalised into model inputs (:class:`~metalib.data.images.ImagePreprocess`).

    ``class_names`` name the ``C`` classes (for Omniglot ``"Alphabet/characterNN"``, with a
    ``/rot000`` .. ``/rot270`` suffix when the split was built with rotations).
    """

    name: str
    images: Tensor
    class_names: list[str]
    counts: Tensor | None = None
    preprocess: ImagePreprocess | None = None

    def __post_init__(self) -> None:
        if self.counts is None:
            if self.images.ndim < 3 or self.images.shape[0] != len(self.class_names):
                raise ValueError(
                    f"split {self.name!r}: images must be [C, drawings, H, W] with "
                    f"C = len(class_names) = {len(self.class_names)}, got shape {tuple(self.images.shape)}"
                )
            return
        self.counts = torch.as_tensor(self.counts, dtype=torch.long).flatten()
        if len(self.counts) != len(self.class_names) or int(self.counts.sum()) != self.images.shape[0] \
                or bool((self.counts < 0).any()):
            raise ValueError(
                f"split {self.name!r}: ragged images [{self.images.shape[0]}, ...] need counts summing to "
                f"{self.images.shape[0]}, one per class ({len(self.class_names)}); got {self.counts.tolist()[:8]}..."
            )

    def __len__(self) -> int:
        return len(self.class_names)

    @property
    def ragged(self) -> bool:
        """Whether classes may differ in size (``images`` flat with ``counts``)."""
        return self.counts is not None

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return len(self.class_names)

    @property
    def class_sizes(self) -> list[int]:
        """Images per class."""
        if self.counts is None:
            return [int(self.images.shape[1])] * self.num_classes
        return self.counts.tolist()

    @property
    def drawings_per_class(self) -> int:
        """Images per class (the smallest class's size when they differ)."""
        return min(self.class_sizes, default=0)

    def class_images(self, c: int) -> Tensor:
        """The images of class ``c``: ``[n, ...]``."""
        if self.counts is None:
            return self.images[c]
        start = int(self.counts[:c].sum())
        return self.images[start:start + int(self.counts[c])]

    def subset(self, fraction: float, *, seed: int = 0) -> "ClassSplit":
        """A random ``fraction`` of the classes (at least one), drawn by ``seed``, in their original order. Classes that
        differ only by a ``/rotNNN`` suffix (Omniglot's rotated copies of one character) are kept or dropped together,
        so that a smaller split has fewer characters, not fewer rotations of each."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        groups = sorted({name.rsplit("/rot", 1)[0] for name in self.class_names})
        order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed))
        kept = {groups[i] for i in order[:max(1, round(fraction * len(groups)))].tolist()}
        idx = [c for c, name in enumerate(self.class_names) if name.rsplit("/rot", 1)[0] in kept]
        names = [self.class_names[c] for c in idx]
        if self.counts is None:
            return ClassSplit(f"{self.name}[{fraction:g}]", self.images[idx], names, preprocess=self.preprocess)
        return ClassSplit(f"{self.name}[{fraction:g}]", torch.cat([self.class_images(c) for c in idx]), names,
                          counts=self.counts[idx], preprocess=self.preprocess)

    def __repr__(self) -> str:
        kind = f", counts {min(self.class_sizes)}..{max(self.class_sizes)}" if self.ragged and len(self) else ""
        return f"ClassSplit(name={self.name!r}, images={tuple(self.images.shape)} {self.images.dtype}{kind})"


@dataclass(eq=False)
class FewShotDataset:
    """A dataset's class splits (``"train"``, ``"val"``, ``"test"``) with the preprocessing that made their images,
    which a learner trained on them needs again to predict on new images; ``source`` says where it was read."""

    name: str
    splits: dict[str, ClassSplit]
    preprocess: ImagePreprocess
    source: str

    def __getitem__(self, split: str) -> ClassSplit:
        if split not in self.splits:
            raise InvalidDatasetError(f"{self.source} has no {split} classes (its splits: {', '.join(self.splits)}): put "
                                      f"classes in {split} (split file or fractions), or do without it (--val-tasks 0 "
                                      "for validation)")
        return self.splits[split]

    def fingerprint(self) -> str:
        """A hash of which classes are in which split, their sizes and the preprocessing: a run resumed on data that
        changed since (a class added to the folder, another normalisation) is another run."""
        import hashlib
        import json

        text = json.dumps({"splits": {k: [v.class_names, v.class_sizes] for k, v in sorted(self.splits.items())},
                           "preprocess": self.preprocess.as_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}: {len(v)} classes, {v.images.shape[0] if v.ragged else v.images.shape[:2].numel()} "
                          "images" for k, v in self.splits.items())
        return f"FewShotDataset({self.name!r}, {parts}; {self.preprocess.size}x{self.preprocess.size}x" \
               f"{self.preprocess.channels} from {self.source})"


#: What the datasets' pickles may hold: NumPy arrays and dtypes, and plain containers (never code).
_PICKLE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "ndarray"),
                   ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
                   ("collections", "OrderedDict"), ("_codecs", "encode"),
                   ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray")}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a dataset's pickle does not hold")
        return super().find_class(module, name)


def safe_unpickle(file: BinaryIO, encoding: str = "ASCII") -> object:
    """A dataset's pickle (CIFAR-100's, mini-ImageNet's caches) loaded with only NumPy arrays and plain containers
    allowed: a downloaded file cannot run code when it is read."""
    return _DataUnpickler(file, encoding=encoding).load()

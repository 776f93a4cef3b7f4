"""What every dataset shares: a named set of classes (:class:`ClassSplit`) and the errors."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..errors import UserError

__all__ = ["ClassSplit", "DatasetNotFoundError", "InvalidDatasetError"]


class DatasetNotFoundError(UserError, FileNotFoundError):
    """The dataset is neither cached, nor available locally, nor downloadable."""


class InvalidDatasetError(UserError, ValueError):
    """A copy of the dataset has the wrong content (missing classes or drawings, bad split files,
    a corrupt zip or image); the message names the file and the fix in one line."""


@dataclass(eq=False)
class ClassSplit:
    """A set of classes for episode sampling: ``images`` ``[C, drawings, H, W]``.

    ``class_names`` name the ``C`` classes (for Omniglot ``"Alphabet/characterNN"``, with a
    ``/rot000`` .. ``/rot270`` suffix when the split was built with rotations).
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
        """Number of classes ``C``."""
        return len(self.class_names)

    @property
    def drawings_per_class(self) -> int:
        """Number of images per class."""
        return int(self.images.shape[1])

    def __repr__(self) -> str:
        return f"ClassSplit(name={self.name!r}, images={tuple(self.images.shape)} {self.images.dtype})"

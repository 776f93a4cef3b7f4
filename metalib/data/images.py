"""Turning image files into the uint8 arrays episodes are drawn from, and back into model inputs.

:class:`ImagePreprocess` is everything a model's inputs depend on (side, channels, resampling, inversion and
the per-channel normalisation); a learner trained on one dataset predicts on new images only through the same
preprocessing, so it is stored with every dataset, checkpoint and manifest.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from .base import ImagePreprocess, InvalidDatasetError

__all__ = ["ImagePreprocess", "IMAGE_SUFFIXES", "decode_image", "resize_images", "to_model_input", "image_files",
           "channel_stats"]

#: Suffixes read as images (Pillow reads them all); other files in a class folder are ignored.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
def _pil():
    from PIL import Image, ImageOps, UnidentifiedImageError

    return Image, ImageOps, UnidentifiedImageError


def image_mode(path: Path) -> str:
    """``"L"`` or ``"RGB"``: whether a file holds a grey or a colour image (its header only)."""
    Image, _, Unidentified = _pil()
    try:
        with Image.open(path) as im:
            mode = im.mode
    except (Unidentified, OSError, ValueError) as exc:
        raise InvalidDatasetError(f"{path} is not an image Pillow can read ({exc}): remove it or replace it") from None
    return "L" if mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"


def decode_image(source: "str | os.PathLike[str] | object", pre: ImagePreprocess) -> np.ndarray:
    """One image (a path, a file-like object or a PIL image) as uint8 ``[channels, size, size]``, resized and
    inverted as ``pre`` says (not yet normalised). A file Pillow cannot read fully is one line naming it."""
    Image, ImageOps, Unidentified = _pil()
    name = str(source) if isinstance(source, (str, os.PathLike)) else type(source).__name__
    try:
        if isinstance(source, Image.Image):
            im = source
            im.load()
        else:
            im = Image.open(source)
            im.load()  # decodes the whole file, so a truncated one fails here
        im = ImageOps.exif_transpose(im) or im
        if im.mode in ("RGBA", "LA", "P", "PA"):  # transparent pixels on white, as an image viewer shows them
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        im = im.convert("L" if pre.channels == 1 else "RGB")
        im = im.resize((pre.size, pre.size), getattr(Image.Resampling, pre.resample.upper()))
    except (Unidentified, OSError, ValueError, SyntaxError) as exc:
        raise InvalidDatasetError(f"{name} is not an image Pillow can read ({exc}): remove it or replace it") from None
    arr = np.array(im, dtype=np.uint8)  # a writable copy (np.asarray of a PIL image is read-only)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return 255 - arr if pre.invert else np.ascontiguousarray(arr)


def resize_images(images: np.ndarray, pre: ImagePreprocess) -> np.ndarray:
    """uint8 ``[n, C, H, W]`` images (decoded already, e.g. from a pickle) at ``pre``'s size; as they are if they
    have it."""
    if images.shape[-2:] == (pre.size, pre.size):
        return images
    from PIL import Image

    return np.stack([decode_image(Image.fromarray(im[0] if im.shape[0] == 1 else im.transpose(1, 2, 0)), pre)
                     for im in images])


def to_model_input(images: Tensor, pre: ImagePreprocess) -> Tensor:
    """uint8 (0..255) or float (already in [0, 1]) images ``[..., C, H, W]`` as normalised float32 model inputs."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if pre.mean == (0.0,) * pre.channels and pre.std == (1.0,) * pre.channels:
        return x
    mean = torch.tensor(pre.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (hidden files skipped), sorted by name."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def channel_stats(batches: Iterable[np.ndarray], channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of pixels scaled to [0, 1], over uint8 ``[n, C, H, W]`` chunks
    (summed in float64, one chunk in memory at a time)."""
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for chunk in batches:
        x = chunk.astype(np.float64) / 255
        total += x.sum(axis=(0, 2, 3))
        squares += np.square(x).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise ValueError("no images to compute the normalisation from")
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)

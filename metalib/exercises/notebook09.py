"""The exercises of notebook 09 (your own data): their tests, with the notebook's objects passed in."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..data import ClassSplit, ImagePreprocess, to_model_input

__all__ = ["verify_09_1", "verify_09_2", "verify_09_3"]


def verify_09_1(count: int, *, split: ClassSplit, shots: int, queries: int) -> tuple[bool, str]:
    """How many classes of ``split`` an ``EpisodeSampler`` with ``shots`` and ``queries`` draws from."""
    expected = sum(n >= shots + queries for n in split.class_sizes)
    return int(count) == expected, f"{count} is not the number of classes with at least {shots + queries} images"


def verify_09_2(fn: Callable[[Tensor, ImagePreprocess], Tensor], *, split: ClassSplit,
                preprocess: ImagePreprocess) -> tuple[bool, str]:
    """``fn(image, preprocess)``: a stored uint8 image ``[C, H, W]`` as the model input, checked on a few images
    against metalib's own conversion."""
    for c in range(min(3, len(split))):
        image = split.class_images(c)[0]
        yours, reference = fn(image, preprocess), to_model_input(image, preprocess)
        if tuple(yours.shape) != tuple(reference.shape):
            return False, f"shape {tuple(yours.shape)}, expected {tuple(reference.shape)}"
        if not torch.allclose(yours.float(), reference, atol=1e-5):
            return False, f"values differ from metalib's by up to {(yours.float() - reference).abs().max():.3g}"
    return True, ""


def verify_09_3(letters: str) -> tuple[bool, str]:
    """The practices (of a-e) that leak test information into few-shot training or model selection: b, c and e."""
    chosen = set("".join(letters).lower()) - set(" ,")
    right = sum((c in chosen) == (c in "bce") for c in "abcde")
    return chosen == set("bce"), f"{right} of the 5 practices are classified right"

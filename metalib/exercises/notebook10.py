"""The exercises of notebook 10 (do we need meta-learning?): their tests, with the notebook's objects passed in."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..algorithms.transfer import centroid_logits
from ..evaluate import EvalResult, paired_difference

__all__ = ["verify_10_1", "verify_10_2", "verify_10_3"]


def verify_10_1(fn: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]) -> tuple[bool, str]:
    """``fn(zs, ys, zq, mean)``: SimpleShot's logits, against the ``simpleshot`` learner's classifier
    (:func:`~metalib.algorithms.transfer.centroid_logits`) on random features of a 4-way 3-shot and a 6-way 1-shot
    task, in float64."""
    g = torch.Generator().manual_seed(10)
    for ways, shots in ((4, 3), (6, 1)):
        zs = torch.randn(ways * shots, 7, generator=g, dtype=torch.float64)
        zq = torch.randn(9, 7, generator=g, dtype=torch.float64)
        ys = torch.arange(ways).repeat_interleave(shots)
        mean = torch.randn(7, generator=g, dtype=torch.float64)
        reference = centroid_logits(zs[None], ys[None], zq[None], ways, mean)[0]
        yours = fn(zs, ys, zq, mean)
        if not isinstance(yours, Tensor) or yours.shape != reference.shape:
            return False, f"{ways}-way {shots}-shot: expected a tensor of logits of shape {tuple(reference.shape)}"
        if not torch.allclose(yours.double(), reference, rtol=1e-6, atol=1e-8):
            return False, f"{ways}-way {shots}-shot: your logits differ by up to {(yours - reference).abs().max():.2g}"
    return True, ""


def verify_10_2(answer, *, a: EvalResult | None, b: EvalResult | None) -> tuple[bool, str]:
    """``(mean, half_width)`` of the per-task differences ``a - b``, within 1e-6."""
    if a is None or b is None:
        return False, "the notebook has no scores for SimpleShot and ProtoNet (their zoo models are missing)"
    mean, half = paired_difference(a, b)
    try:
        yours_mean, yours_half = (float(v) for v in answer)
    except (TypeError, ValueError):
        return False, "answer a pair (mean, half_width)"
    if abs(yours_mean - mean) > 1e-6:
        return False, f"the mean difference {yours_mean:.5f} is not the per-task mean"
    return abs(yours_half - half) <= 1e-6, f"the half-width {yours_half:.5f} is not 1.96 s / sqrt(n)"


def verify_10_3(letters: str) -> tuple[bool, str]:
    """The situations (a-e) that favour meta-learning: b, d and e."""
    chosen = set("".join(letters).lower()) - set(" ,")
    right = sum((c in chosen) == (c in "bde") for c in "abcde")
    return chosen == set("bde"), f"{right} of the 5 situations are classified right"

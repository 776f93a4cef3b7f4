"""N-way K-shot classification episodes."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..errors import ArgumentError
from ..data.base import ClassSplit
from .batch import TaskBatch
from .sampler import TaskSampler, check_count, task_generator

__all__ = ["EpisodeSampler"]

class EpisodeSampler(TaskSampler):
    """N-way K-shot classification episodes with Q queries per class.

    Each episode picks ``ways`` distinct classes of the split and, per class,
    ``shots + queries`` distinct drawings: the first ``shots`` form the support set, the
    rest the query set (so they never share a drawing). Labels are ``0..N-1`` in the order
    of ``info["class_ids"]``; support and query are grouped by label
    (``support_y = [0]*K + [1]*K + ...``).

    Images come out float32 ``[.., C, H, W]`` (``C = 1`` for ``[classes, drawings, H, W]``
    input); uint8 input is divided by 255, float input is used as is, then normalised per channel
    when the split's ``preprocess`` has a mean and std. The images are moved to ``device`` once at
    construction (on a CPU a memory-mapped cache stays mapped) and episodes are gathered there.

    A ragged split (classes of different sizes) draws only from classes with at least
    ``shots + queries`` images; the others are listed in ``too_small`` (with a warning) and are
    an error only when fewer than ``ways`` classes remain.

    ``info``: ``class_ids`` ``[B, N]`` (class indices within the split),
    ``support_drawing_ids`` ``[B, N*K]``, ``query_drawing_ids`` ``[B, N*Q]``,
    ``task_index`` ``[B]``.
    """

    def __init__(
        self,
        split_or_images: ClassSplit | Tensor,
        ways: int,
        shots: int,
        queries: int,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(seed=seed, device=device)
        counts, names, pre = None, None, None
        if isinstance(split_or_images, ClassSplit):
            images, where = split_or_images.images, f"split {split_or_images.name!r} has"
            counts, names, pre = split_or_images.counts, split_or_images.class_names, split_or_images.preprocess
        elif isinstance(split_or_images, Tensor):
            images, where = split_or_images, "the given images have"
        else:
            raise TypeError(
                f"expected a ClassSplit or a Tensor [classes, drawings, H, W], "
                f"got {type(split_or_images).__name__}"
            )
        if counts is None and images.ndim == 4 or counts is not None and images.ndim == 3:
            images = images.unsqueeze(-3)
        elif images.ndim != (5 if counts is None else 4):
            raise ArgumentError(
                f"images must be [classes, drawings, H, W] or [classes, drawings, channels, H, W]; "
                f"got shape {tuple(images.shape)} (rank {images.ndim})"
            )
        if images.dtype == torch.uint8:
            self._from_uint8 = True
        elif images.is_floating_point():
            images, self._from_uint8 = images.float(), False
        else:
            raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
        self.ways = check_count("ways", ways)
        self.shots = check_count("shots", shots)
        self.queries = check_count("queries", queries)
        need = self.shots + self.queries
        self.too_small: list[str] = []
        if counts is None:
            self.num_classes, self.drawings = int(images.shape[0]), int(images.shape[1])
            self.x_shape = tuple(images.shape[2:])
            self._eligible = self._offsets = self._counts = None
        else:
            ok = counts >= need
            self.too_small = [f"{names[i]} ({int(counts[i])})" for i in (~ok).nonzero().flatten().tolist()]
            self._eligible = ok.nonzero().flatten()
            self._counts = counts
            self._offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
            self.num_classes = len(self._eligible)
            self.drawings = int(counts[ok].max()) if self.num_classes else 0
            self.x_shape = tuple(images.shape[1:])
        if ways > self.num_classes:
            if self.too_small:
                raise ArgumentError(
                    f"{ways}-way {shots}-shot with {queries} queries needs {ways} classes of at least {need} images "
                    f"but {where} {self.num_classes}; too small: {', '.join(self.too_small[:10])}"
                    f"{' ...' if len(self.too_small) > 10 else ''}; lower ways, shots or queries, or add images")
            raise ArgumentError(
                f"{ways}-way needs {ways} classes but {where} {self.num_classes}; "
                "lower ways or use a bigger split"
            )
        if counts is None and need > self.drawings:
            raise ArgumentError(
                f"{shots} shots + {queries} queries = {need} > {self.drawings} "
                "drawings per class; lower shots or queries"
            )
        if self.too_small:
            warnings.warn(f"{where} {len(self.too_small)} class(es) with fewer than {need} images ({shots} shots + "
                          f"{queries} queries), left out of its episodes: {', '.join(self.too_small[:10])}"
                          f"{' ...' if len(self.too_small) > 10 else ''}", stacklevel=2)
        self.images = images.to(self.device)  # kept in its compact dtype, converted per episode
        self.preprocess = pre  # how the images were made (None when unknown): what predictions on new images need
        self._norm = None
        if pre is not None and (any(pre.mean) or any(s != 1 for s in pre.std)):
            shape = (-1,) + (1,) * (len(self.x_shape) - 1)
            self._norm = (torch.tensor(pre.mean, device=self.device).view(shape),
                          torch.tensor(pre.std, device=self.device).view(shape))
        if self._offsets is not None:
            self._offsets = self._offsets.to(self.device)  # drawing stays on the CPU generator, gathering here

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({self.ways}-way {self.shots}-shot {self.queries}-query, "
            f"{self.num_classes} classes x {'up to ' if self._offsets is not None else ''}{self.drawings}, "
            f"seed={self.seed}, device={self.device})"
        )

    def _draw(self, index: int) -> tuple[Tensor, Tensor]:
        g = task_generator(self.seed, index)
        if self._eligible is None:
            classes = torch.randperm(self.num_classes, generator=g)[: self.ways]
            drawings = torch.rand(self.ways, self.drawings, generator=g).argsort(dim=1)
            return classes, drawings[:, : self.shots + self.queries]
        classes = self._eligible[torch.randperm(self.num_classes, generator=g)[: self.ways]]
        keys = torch.rand(self.ways, self.drawings, generator=g)
        keys[torch.arange(self.drawings) >= self._counts[classes, None]] = 2.0  # past a class's end: last
        return classes, keys.argsort(dim=1)[:, : self.shots + self.queries]

    def _gather(self, classes: Tensor, drawings: Tensor) -> Tensor:
        """Images ``[B, N*D, *x_shape]`` of ``classes`` ``[B, N]`` x ``drawings`` ``[B, N, D]``."""
        if self._offsets is None:
            x = self.images[classes[:, :, None], drawings]  # [B, N, D, *x_shape], contiguous
        else:
            x = self.images[self._offsets[classes][:, :, None] + drawings]
        x = x / 255 if self._from_uint8 else x  # uint8 / int -> float32 in one pass
        if self._norm is not None:
            x = (x - self._norm[0]) / self._norm[1]
        return x.view(x.shape[0], -1, *self.x_shape)

    def _make_batch(self, indices: list[int]) -> TaskBatch:
        n, k, q, dev = self.ways, self.shots, self.queries, self.device
        drawn = [self._draw(i) for i in indices]
        classes = torch.stack([c for c, _ in drawn]).to(dev)  # [B, N]
        drawings = torch.stack([d for _, d in drawn]).to(dev)  # [B, N, K+Q]
        b = len(indices)
        labels = torch.arange(n, device=dev)
        return TaskBatch(
            support_x=self._gather(classes, drawings[:, :, :k]),
            support_y=labels.repeat_interleave(k).expand(b, -1).contiguous(),
            query_x=self._gather(classes, drawings[:, :, k:]),
            query_y=labels.repeat_interleave(q).expand(b, -1).contiguous(),
            info={
                "class_ids": classes,
                "support_drawing_ids": drawings[:, :, :k].reshape(b, n * k),
                "query_drawing_ids": drawings[:, :, k:].reshape(b, n * q),
                "task_index": torch.tensor(indices, dtype=torch.long, device=dev),
            },
        )

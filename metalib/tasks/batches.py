"""Minibatches of labelled images over all classes of a split: the tasks of supervised pre-training.

The transfer baselines (:mod:`metalib.algorithms.transfer`) pre-train an embedding the ordinary way, a classifier over
every training class on shuffled minibatches, not on episodes. To reuse the training loop (checkpoints, resume,
sharding over processes), a minibatch is a "task" here: task ``i`` holds the ``batch_size`` images at positions
``i * batch_size ..`` of an endless sequence of epochs, each epoch a permutation of every image of the split drawn
from ``task_generator(seed, epoch)``. So a run's images are a pure function of ``(seed, i)``, like an episode
stream's, and every image is seen once per epoch.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..data.base import ClassSplit
from .batch import TaskBatch
from .episodes import EpisodeSampler
from .sampler import TaskSampler, check_count, task_generator

__all__ = ["ClassBatches"]


class ClassBatches(TaskSampler):
    """Task ``i`` = minibatch ``i`` of ``batch_size`` images of ``split`` (a :class:`~metalib.data.ClassSplit` or a
    ``[classes, drawings, H, W]`` tensor), shuffled epoch by epoch.

    A task has no support set (``support_x`` ``[B, 0, ...]``); its query set is the minibatch, with labels the
    classes' indices in the split (``query_y``), and ``info["class_ids"]`` ``[B, classes]`` maps labels to those
    indices (the identity, as episodes map theirs), so a learner reads global labels the same way from both."""

    def __init__(self, split: ClassSplit | Tensor, batch_size: int = 64, *, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        super().__init__(seed=seed, device=device)
        self.batch_size = check_count("batch_size", batch_size)
        with warnings.catch_warnings():  # its classes of one image are used here; only episodes must leave them out
            warnings.simplefilter("ignore")
            self._store = EpisodeSampler(split, 1, 1, 1, seed=seed, device=device)  # images, normalisation, gathering
        counts = self._store._counts
        if counts is None:
            counts = torch.full((self._store.images.shape[0],), self._store.images.shape[1], dtype=torch.long)
        self.num_classes = len(counts)
        self.preprocess = self._store.preprocess
        self.x_shape = self._store.x_shape
        self._class = torch.repeat_interleave(torch.arange(self.num_classes), counts)  # each image's class
        starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])
        self._drawing = torch.arange(len(self._class)) - starts[self._class]         # and its index within it
        self.num_images = len(self._class)
        self._epochs: dict[int, Tensor] = {}

    def __repr__(self) -> str:
        return (f"ClassBatches({self.num_images} images of {self.num_classes} classes, batch_size={self.batch_size}, "
                f"seed={self.seed}, device={self.device})")

    @property
    def batches_per_epoch(self) -> float:
        """Minibatches per pass over the split (a fraction when the batch size does not divide it)."""
        return self.num_images / self.batch_size

    def _order(self, epoch: int) -> Tensor:
        if epoch not in self._epochs:
            if len(self._epochs) >= 2:
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = torch.randperm(self.num_images, generator=task_generator(self.seed, epoch))
        return self._epochs[epoch]

    def image_ids(self, index: int) -> Tensor:
        """The images of minibatch ``index`` (indices into the split's images in class order)."""
        positions = torch.arange(index * self.batch_size, (index + 1) * self.batch_size)
        epochs = positions // self.num_images
        return torch.cat([self._order(int(e))[positions[epochs == e] % self.num_images] for e in epochs.unique()])

    def epoch_batches(self, epoch: int = 0):
        """Every image once, as ``[1, n, *x_shape]`` tensors in epoch ``epoch``'s shuffled order and minibatches
        (the last one shorter), e.g. to average features over the split."""
        order = self._order(epoch)
        for start in range(0, self.num_images, self.batch_size):
            ids = order[start:start + self.batch_size]
            yield self._store._gather(self._class[ids].to(self.device)[None],
                                      self._drawing[ids].to(self.device)[None, :, None])

    def _make_batch(self, indices: list[int]) -> TaskBatch:
        ids = torch.stack([self.image_ids(i) for i in indices])                        # [B, batch_size]
        classes, drawings = self._class[ids].to(self.device), self._drawing[ids].to(self.device)
        x = self._store._gather(classes, drawings.unsqueeze(-1))                       # [B, batch_size, *x_shape]
        b = len(indices)
        return TaskBatch(support_x=x[:, :0], support_y=classes[:, :0], query_x=x, query_y=classes,
                         info={"class_ids": torch.arange(self.num_classes, device=self.device).expand(b, -1),
                               "task_index": torch.tensor(indices, device=self.device)})

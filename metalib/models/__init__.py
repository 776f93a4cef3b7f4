"""Models used through ``torch.func.functional_call`` and by the task-batched engines: conv4 (Omniglot, and at
84x84 with 3 channels mini-ImageNet), ResNet-12 (the natural-image benchmarks' backbone) and the sinusoid MLP.

Every model is a plain ``nn.Module`` whose forward pass is a pure function of its parameters, so the same
weights run per task or batched over tasks (``forward_tasks``, the :class:`TaskBatchedModel` protocol).
BatchNorm is :class:`TaskBatchNorm` everywhere: per-task batch statistics, no running averages
(:mod:`metalib.models.functional` says why).
"""
import torch
from torch import nn

from .conv4 import Conv4, conv4
from .functional import (TRAINING_BATCHNORM, BodyHeadModel, TaskBatchedModel, TaskBatchNorm, per_task,
                         split_body_head)
from .mlp import MLP, mlp
from .resnet12 import ResNet12, resnet12

__all__ = ["TaskBatchNorm", "Conv4", "MLP", "ResNet12", "conv4", "mlp", "resnet12", "split_body_head",
           "TRAINING_BATCHNORM", "TaskBatchedModel", "BodyHeadModel", "per_task", "BACKBONES", "backbone"]

#: The image backbones by name (``train_cli --model``).
BACKBONES = ("conv4", "resnet12")


def backbone(name: str, n_classes: int, *, in_channels: int, image_size: int, hidden: int = 64,
             drop_rate: float = 0.0, seed: int | None = None, device: torch.device | str = "cpu",
             feature_maps: bool = False) -> nn.Module:
    """The image backbone ``name`` (``"conv4"`` with ``hidden`` channels, or ``"resnet12"`` with DropBlock at
    ``drop_rate`` in its last two blocks) for ``in_channels`` x ``image_size`` x ``image_size`` inputs, with
    ``n_classes`` outputs (0: the embedding). ``feature_maps=True``: conv4 pooling in its first two blocks only, whose
    embedding is spatial maps (``feature_shape``) for a learner that compares maps (Relation Networks)."""
    from ..errors import ArgumentError

    if name == "conv4":
        return conv4(n_classes, in_channels=in_channels, hidden=hidden, image_size=image_size, seed=seed, device=device,
                     pooled_blocks=2 if feature_maps else 4)
    if name == "resnet12" and feature_maps:
        raise ArgumentError("a learner that compares feature maps (relation) runs on conv4 only: use --model conv4")
    if name == "resnet12":
        return resnet12(n_classes, in_channels=in_channels, drop_rate=drop_rate, seed=seed, device=device)
    raise ArgumentError(f"model must be one of {BACKBONES}, got {name!r}")

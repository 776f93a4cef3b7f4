"""conv4: four blocks of [3x3 conv, BatchNorm, 2x2 max-pool, ReLU] and a linear head (Vinyals et al.; Finn et al.),
the backbone of the Omniglot results; with ``in_channels=3, image_size=84`` the mini-ImageNet one."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..utils import resolve_device
from .functional import TaskBatchedBackbone, TaskBatchNorm, sequential_tasks

__all__ = ["Conv4", "conv4"]


class Conv4(TaskBatchedBackbone):
    """Four blocks of [3x3 conv (hidden channels), BatchNorm, 2x2 max-pool, ReLU], then a linear head.

    28x28 inputs shrink to 14, 7, 3, 1, so the head sees ``hidden`` features.
    With ``n_classes=0`` there is no head and the network returns its embedding (ProtoNets).
    Max-pooling before the ReLU computes exactly the usual conv-BN-ReLU-pool block (both are
    monotone, so they commute, gradients included) with the ReLU on a quarter of the values.
    """

    def __init__(self, n_classes: int = 5, in_channels: int = 1, hidden: int = 64, image_size: int = 28,
                 pooled_blocks: int = 4):
        super().__init__()
        if not 0 <= pooled_blocks <= 4:
            raise ValueError(f"pooled_blocks must be 0 to 4, got {pooled_blocks}")
        blocks = []
        channels = in_channels
        for i in range(4):
            pool = [nn.MaxPool2d(2)] if i < pooled_blocks else []
            blocks += [nn.Conv2d(channels, hidden, 3, padding=1), TaskBatchNorm(hidden), *pool, nn.ReLU()]
            channels = hidden
        self.features = nn.Sequential(*blocks, nn.Flatten())
        side = image_size
        for _ in range(pooled_blocks):
            side //= 2
        self.feature_shape = (hidden, side, side)  # the last block's maps, before they are flattened
        self.embedding_dim = hidden * side * side
        self.head = nn.Linear(self.embedding_dim, n_classes) if n_classes > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def embed_tasks(self, params: dict[str, Tensor], x: Tensor, second_order: bool = False,
                    channels_last: bool = False) -> Tensor:
        """The body of :meth:`forward_tasks`: ``[B, n, C, H, W]`` -> ``[B, n, embedding_dim]``.

        With ``channels_last`` (the engines ask for it on CPUs) activations are NHWC (oneDNN's
        convolutions, BatchNorm and max-pooling run
        without layout copies; max-pooling measured ~9x faster). BatchNorm is fused for passes
        differentiated once; passes differentiated twice use the unfused form, whose double backward
        is much cheaper than the fused one's (measured on CPU, BENCHMARKS.md).
        """
        return sequential_tasks(self.features, "features.", params, x, second_order, channels_last)



def conv4(n_classes: int = 5, *, in_channels: int = 1, hidden: int = 64, image_size: int = 28, seed: int | None = None,
          device: torch.device | str = "cpu", pooled_blocks: int = 4) -> Conv4:
    """Build a conv4 network; ``seed`` fixes its initialisation. ``pooled_blocks=2`` max-pools in the first two blocks
    only (Sung et al.'s embedding for Relation Networks: 64 maps of 7x7 for 28x28 images)."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = Conv4(n_classes, in_channels, hidden, image_size, pooled_blocks)
    return model.to(resolve_device(device))



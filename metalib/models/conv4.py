"""conv4: four blocks of [3x3 conv, BatchNorm, 2x2 max-pool, ReLU] and a linear head (Vinyals et al.; Finn et al.),
the backbone of the Omniglot results; with ``in_channels=3, image_size=84`` the mini-ImageNet one."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..utils import resolve_device
from .functional import TaskBatchedBackbone, TaskBatchNorm, batchnorm_tasks, conv_tasks, per_task

__all__ = ["Conv4", "conv4"]


class Conv4(TaskBatchedBackbone):
    """Four blocks of [3x3 conv (hidden channels), BatchNorm, 2x2 max-pool, ReLU], then a linear head.

    28x28 inputs shrink to 14, 7, 3, 1, so the head sees ``hidden`` features.
    With ``n_classes=0`` there is no head and the network returns its embedding (ProtoNets).
    Max-pooling before the ReLU computes exactly the usual conv-BN-ReLU-pool block (both are
    monotone, so they commute, gradients included) with the ReLU on a quarter of the values.
    """

    def __init__(self, n_classes: int = 5, in_channels: int = 1, hidden: int = 64, image_size: int = 28):
        super().__init__()
        blocks = []
        channels = in_channels
        for _ in range(4):
            blocks += [nn.Conv2d(channels, hidden, 3, padding=1), TaskBatchNorm(hidden), nn.MaxPool2d(2), nn.ReLU()]
            channels = hidden
        self.features = nn.Sequential(*blocks, nn.Flatten())
        side = image_size
        for _ in range(4):
            side //= 2
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
        B, n = x.shape[:2]
        h = x.transpose(0, 1).reshape(n, -1, *x.shape[3:])
        for i, layer in enumerate(self.features):
            if isinstance(layer, (nn.Conv2d, TaskBatchNorm)):
                w = per_task(params[f"features.{i}.weight"], B, layer.weight)
                b = per_task(params[f"features.{i}.bias"], B, layer.bias)
                h = conv_tasks(h, w, b, B, layer, channels_last) if isinstance(layer, nn.Conv2d) \
                    else batchnorm_tasks(h, w, b, layer, second_order)
            elif isinstance(layer, nn.Flatten):
                h = h.reshape(n, B, -1).transpose(0, 1)  # [B, n, features]
            else:  # ReLU, MaxPool2d: per channel, so per task
                h = layer(h)
        return h



def conv4(n_classes: int = 5, *, in_channels: int = 1, hidden: int = 64, image_size: int = 28, seed: int | None = None,
          device: torch.device | str = "cpu") -> Conv4:
    """Build a conv4 network; ``seed`` fixes its initialisation."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = Conv4(n_classes, in_channels, hidden, image_size)
    return model.to(resolve_device(device))



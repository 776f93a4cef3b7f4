"""ResNet-12: the backbone of TADAM, MetaOptNet and RFS on the natural-image benchmarks.

Four residual blocks of 64, 160, 320 and 640 channels. Each block is three [3x3 convolution, BatchNorm,
LeakyReLU(0.1)] layers (the last without its activation) plus a [1x1 convolution, BatchNorm] shortcut, their
sum through LeakyReLU(0.1), then 2x2 max-pooling, and optionally DropBlock (Ghiasi et al. 2018) in the last
two blocks while training. The features are averaged over space (640 for any input size; 84x84 shrinks to 5x5
before the average), then a linear head. BatchNorm is :class:`TaskBatchNorm` (per-task statistics), so every
learner of the MAML family, MAML++'s per-step BatchNorm included, runs it as it runs conv4.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils import resolve_device
from .functional import TaskBatchedBackbone, TaskBatchNorm, batchnorm_tasks, conv_tasks, per_task

__all__ = ["ResNet12", "ResidualBlock", "resnet12"]

_SLOPE = 0.1  # LeakyReLU's negative slope in MetaOptNet's and RFS's ResNet-12


def drop_block(x: Tensor, rate: float, block_size: int) -> Tensor:
    """DropBlock: zero ``block_size`` x ``block_size`` squares so that about ``rate`` of ``x``'s activations are
    dropped, and rescale the rest (Ghiasi et al. 2018); per sample and channel."""
    side = x.shape[-1]
    block = min(block_size, side)
    gamma = rate / block**2 * side**2 / (side - block + 1) ** 2
    seeds = torch.bernoulli(torch.full((*x.shape[:2], side - block + 1, side - block + 1), gamma,
                                       device=x.device, dtype=x.dtype))
    dropped = F.max_pool2d(F.pad(seeds, [block - 1] * 4), block, stride=1)[..., :side, :side]
    keep = 1 - dropped
    return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))


class ResidualBlock(nn.Module):
    """[conv3x3, BN, LeakyReLU] x 2, conv3x3, BN; plus the conv1x1-BN shortcut; LeakyReLU; 2x2 max-pool."""

    def __init__(self, in_channels: int, channels: int, drop_rate: float = 0.0, block_size: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.bn1 = TaskBatchNorm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = TaskBatchNorm(channels)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn3 = TaskBatchNorm(channels)
        self.shortcut = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.shortcut_bn = TaskBatchNorm(channels)
        self.drop_rate, self.block_size = drop_rate, block_size

    def forward(self, x: Tensor) -> Tensor:
        h = F.leaky_relu(self.bn1(self.conv1(x)), _SLOPE)
        h = F.leaky_relu(self.bn2(self.conv2(h)), _SLOPE)
        h = self.bn3(self.conv3(h))
        return self._out(h + self.shortcut_bn(self.shortcut(x)))

    def _out(self, h: Tensor) -> Tensor:
        h = F.max_pool2d(F.leaky_relu(h, _SLOPE), 2)
        if self.training and self.drop_rate > 0:
            h = drop_block(h, self.drop_rate, self.block_size)
        return h

    def forward_tasks(self, params: dict[str, Tensor], prefix: str, h: Tensor, tasks: int, second_order: bool,
                      channels_last: bool) -> Tensor:
        """The block on ``h`` ``[n, B*C, H, W]`` (tasks stacked along channels) with ``params`` shared or per task."""
        def conv(name: str, x: Tensor) -> Tensor:
            layer = getattr(self, name)
            return conv_tasks(x, per_task(params[f"{prefix}{name}.weight"], tasks, layer.weight), None, tasks, layer,
                              channels_last)

        def bn(name: str, x: Tensor) -> Tensor:
            layer = getattr(self, name)
            return batchnorm_tasks(x, per_task(params[f"{prefix}{name}.weight"], tasks, layer.weight),
                                   per_task(params[f"{prefix}{name}.bias"], tasks, layer.bias), layer, second_order)

        out = F.leaky_relu(bn("bn1", conv("conv1", h)), _SLOPE)
        out = F.leaky_relu(bn("bn2", conv("conv2", out)), _SLOPE)
        out = bn("bn3", conv("conv3", out))
        return self._out(out + bn("shortcut_bn", conv("shortcut", h)))


class ResNet12(TaskBatchedBackbone):
    """ResNet-12 (``widths`` 64-160-320-640 by default) with a linear head of ``n_classes`` outputs; with
    ``n_classes=0`` it returns its ``widths[-1]``-dimensional embedding (ProtoNets, R2D2). ``drop_rate`` > 0 turns
    on DropBlock in the last two blocks while training (RFS: 0.1, block size 5)."""

    def __init__(self, n_classes: int = 5, in_channels: int = 3, widths: tuple[int, ...] = (64, 160, 320, 640),
                 drop_rate: float = 0.0, block_size: int = 5):
        super().__init__()
        blocks, channels = [], in_channels
        for i, width in enumerate(widths):
            blocks.append(ResidualBlock(channels, width, drop_rate if i >= len(widths) - 2 else 0.0, block_size))
            channels = width
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embedding_dim = channels
        self.head = nn.Linear(channels, n_classes) if n_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=_SLOPE)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def embed_tasks(self, params: dict[str, Tensor], x: Tensor, second_order: bool = False,
                    channels_last: bool = False) -> Tensor:
        """``[B, n, C, H, W]`` -> ``[B, n, embedding_dim]``, tasks stacked along channels (grouped convolutions)."""
        B, n = x.shape[:2]
        h = x.transpose(0, 1).reshape(n, -1, *x.shape[3:])
        if channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        for i, block in enumerate(self.features[:-2]):
            h = block.forward_tasks(params, f"features.{i}.", h, B, second_order, channels_last)
        return h.mean(dim=(2, 3)).view(n, B, -1).transpose(0, 1)



def resnet12(n_classes: int = 5, *, in_channels: int = 3, widths: tuple[int, ...] = (64, 160, 320, 640),
             drop_rate: float = 0.0, seed: int | None = None, device: torch.device | str = "cpu") -> ResNet12:
    """Build a ResNet-12; ``seed`` fixes its initialisation."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = ResNet12(n_classes, in_channels, tuple(widths), drop_rate)
    return model.to(resolve_device(device))

"""The sinusoid MLP (Finn et al.'s 1-40-40-1 regression network)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..utils import resolve_device
from .functional import linear_tasks, per_task

__all__ = ["MLP", "mlp"]


class MLP(nn.Module):
    """Fully connected ReLU network, 1-40-40-1 by default (the MAML sinusoid model)."""

    def __init__(self, sizes: tuple[int, ...] = (1, 40, 40, 1)):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers[:-1])
        self.head = layers[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def forward_tasks(self, params: dict[str, Tensor], x: Tensor, second_order: bool = False,
                      channels_last: bool = False) -> Tensor:
        """All tasks in one pass: ``x`` ``[B, n, in]``, parameters shared or ``[B, *shape]``; returns ``[B, n, out]``.
        (The hints of :meth:`Conv4.forward_tasks` have nothing to choose here.)"""
        return self.head_tasks(params, self.embed_tasks(params, x))

    def embed_tasks(self, params: dict[str, Tensor], x: Tensor, second_order: bool = False,
                    channels_last: bool = False) -> Tensor:
        h = x
        for k, layer in self.features.named_children():
            h = self._layer_tasks(layer, f"features.{k}", params, h)
        return h

    def head_tasks(self, params: dict[str, Tensor], h: Tensor) -> Tensor:
        return self._layer_tasks(self.head, "head", params, h)

    @staticmethod
    def _layer_tasks(layer: nn.Module, name: str, params: dict[str, Tensor], h: Tensor) -> Tensor:
        if isinstance(layer, nn.Linear):
            B = h.shape[0]
            return linear_tasks(h, per_task(params[f"{name}.weight"], B, layer.weight),
                                 per_task(params[f"{name}.bias"], B, layer.bias))
        return layer(h)


def mlp(sizes: tuple[int, ...] = (1, 40, 40, 1), *, seed: int | None = None,
        device: torch.device | str = "cpu") -> MLP:
    """Build the sinusoid MLP; ``seed`` fixes its initialisation."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = MLP(sizes)
    return model.to(resolve_device(device))



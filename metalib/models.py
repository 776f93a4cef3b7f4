"""Models used through ``torch.func.functional_call``: conv4 for Omniglot, an MLP for sinusoids.

Every model is a plain ``nn.Module`` whose forward pass is a pure function of its parameters,
so the same weights run per task or batched over tasks with ``vmap``.

BatchNorm semantics (explicit, because they matter for few-shot results): ``TaskBatchNorm``
always normalises with the statistics of the batch it is given and keeps no running averages,
as in the MAML reference code. During adaptation that batch is a task's support set; on the
query set it is the task's query set ("transductive" batch norm). Evaluation output reports it
as ``batchnorm="transductive"``.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .utils import resolve_device

__all__ = ["TaskBatchNorm", "Conv4", "MLP", "conv4", "mlp", "split_body_head", "TRAINING_BATCHNORM",
           "TaskBatchedModel", "BodyHeadModel"]

TRAINING_BATCHNORM = "transductive"  # in training, BatchNorm uses each task's own batch statistics (the evaluation
# modes, transductive and inductive, are metalib.inner.BATCHNORM_MODES)


@runtime_checkable
class TaskBatchedModel(Protocol):
    """A model that runs a whole meta-batch in one pass (the contract the inner-loop engines use).

    ``x`` is ``[B, n, ...]``; each entry of ``params`` is shared (the parameter's own shape) or per task
    (``[B, *shape]``); outputs are ``[B, n, ...]``. ``forward_tasks = head_tasks . embed_tasks``.
    ``second_order`` and ``channels_last`` are execution hints from the engine that never change the
    numbers: the pass's graph will be differentiated twice; activations may use the NHWC layout.
    """

    def forward_tasks(self, params: dict[str, Tensor], x: Tensor, second_order: bool = False,
                      channels_last: bool = False) -> Tensor: ...

    def embed_tasks(self, params: dict[str, Tensor], x: Tensor, second_order: bool = False,
                    channels_last: bool = False) -> Tensor: ...

    def head_tasks(self, params: dict[str, Tensor], h: Tensor) -> Tensor: ...


@runtime_checkable
class BodyHeadModel(Protocol):
    """A model split into ``features`` (the body) and ``head``: ``model(x) == head(features(x))``.
    Parameters named ``head.*`` belong to the head (ANIL adapts only those)."""

    features: nn.Module
    head: nn.Module


class TaskBatchNorm(nn.Module):
    """BatchNorm over the current batch only, with the affine transform applied by hand.

    Why by hand: with torch 2.13, second-order gradients of ``F.batch_norm(training=True)``
    *with* its ``weight``/``bias`` arguments are silently wrong under ``torch.func.vmap``;
    without them they are exact. So we normalise with ``F.batch_norm`` and scale/shift here.
    ``tests/test_inner.py`` checks the conv4 meta-gradient against finite differences.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.normalize(x, self.weight, self.bias)

    def normalize(self, x: Tensor, weight: Tensor, bias: Tensor, fused: bool = False) -> Tensor:
        """Batch-normalise ``x`` over all dims but 1, then scale and shift per channel.

        ``fused=True`` lets ``F.batch_norm`` apply the affine transform itself: one kernel instead of
        three, but a costlier double backward. Only for plain autograd, never under ``vmap``.
        """
        if fused:
            return F.batch_norm(x, None, None, weight, bias, training=True, eps=self.eps)
        x = F.batch_norm(x, None, None, training=True, eps=self.eps)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(bias.view(shape), x, weight.view(shape))


class Conv4(nn.Module):
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

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def forward_tasks(self, params: dict[str, Tensor], x: Tensor, second_order: bool = False,
                      channels_last: bool = False) -> Tensor:
        """Every task of a meta-batch in one pass: ``x`` is ``[B, n, C, H, W]``, each parameter is
        either shared (its usual shape) or per task (``[B, *shape]``); returns ``[B, n, out]``.

        Tasks are stacked along channels, ``[n, B*C, H, W]``, so each conv is one grouped
        convolution and ``F.batch_norm`` over ``B*C`` channels gives per-task statistics.
        ``second_order`` is a speed hint, never a change in the numbers: the graph of this pass will
        be differentiated twice (second-order inner steps), see :meth:`embed_tasks`.
        """
        return self.head_tasks(params, self.embed_tasks(params, x, second_order, channels_last))

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
            if isinstance(layer, nn.Conv2d):
                w = _per_task(params[f"features.{i}.weight"], B, layer.weight)
                b = _per_task(params[f"features.{i}.bias"], B, layer.bias)
                if channels_last and B == 1 and h.shape[1] == 1:
                    h = _conv_one_channel_nhwc(h, w[0], b[0], layer)
                else:
                    h = F.conv2d(h, w.flatten(0, 1), b.flatten(), padding=layer.padding, groups=B)
                    if channels_last:
                        h = h.contiguous(memory_format=torch.channels_last)
            elif isinstance(layer, TaskBatchNorm):
                w = _per_task(params[f"features.{i}.weight"], B, layer.weight)
                b = _per_task(params[f"features.{i}.bias"], B, layer.bias)
                h = layer.normalize(h, w.flatten(), b.flatten(), fused=not second_order)
            elif isinstance(layer, nn.Flatten):
                h = h.reshape(n, B, -1).transpose(0, 1)  # [B, n, features]
            else:  # ReLU, MaxPool2d: per channel, so per task
                h = layer(h)
        return h

    def head_tasks(self, params: dict[str, Tensor], h: Tensor) -> Tensor:
        """The head of :meth:`forward_tasks`: ``[B, n, embedding_dim]`` -> ``[B, n, n_classes]``."""
        if isinstance(self.head, nn.Identity):
            return h
        B = h.shape[0]
        return _linear_tasks(h, _per_task(params["head.weight"], B, self.head.weight),
                             _per_task(params["head.bias"], B, self.head.bias))


def _conv_one_channel_nhwc(x: Tensor, w: Tensor, b: Tensor, layer: nn.Conv2d) -> Tensor:
    """A convolution of a one-channel image as a matrix product that writes channels-last output.

    A one-channel input has no memory layout to pass on, so ``F.conv2d`` returns NCHW and the
    conversion (forward) and its inverse (backward) would copy the largest activation twice.
    """
    n, _, height, width = x.shape
    cols = F.unfold(x, layer.kernel_size, padding=layer.padding, stride=layer.stride)  # [n, k*k, H'*W']
    out_h = (height + 2 * layer.padding[0] - layer.kernel_size[0]) // layer.stride[0] + 1
    out_w = (width + 2 * layer.padding[1] - layer.kernel_size[1]) // layer.stride[1] + 1
    out = torch.addmm(b, cols.transpose(1, 2).flatten(0, 1), w.flatten(1).t())  # [n*H'*W', C_out]
    return out.view(n, out_h, out_w, -1).permute(0, 3, 1, 2)


def _per_task(p: Tensor, tasks: int, layer_param: Tensor) -> Tensor:
    """``[B, *shape]`` per-task parameters pass through; shared ones are broadcast (a view, no copy)."""
    if p.dim() == layer_param.dim():
        # unsqueeze, not expand, for one task: its backward is a view, expand's is a summation kernel
        return p.unsqueeze(0) if tasks == 1 else p.expand(tasks, *p.shape)
    if p.dim() == layer_param.dim() + 1 and p.shape[0] == tasks:
        return p
    raise ValueError(f"parameter of shape {tuple(p.shape)} fits neither {tuple(layer_param.shape)} "
                     f"nor [{tasks}, *{tuple(layer_param.shape)}]")


def _linear_tasks(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))


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
            return _linear_tasks(h, _per_task(params[f"{name}.weight"], B, layer.weight),
                                 _per_task(params[f"{name}.bias"], B, layer.bias))
        return layer(h)


def conv4(n_classes: int = 5, *, in_channels: int = 1, hidden: int = 64, image_size: int = 28, seed: int | None = None,
          device: torch.device | str = "cpu") -> Conv4:
    """Build a conv4 network; ``seed`` fixes its initialisation."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = Conv4(n_classes, in_channels, hidden, image_size)
    return model.to(resolve_device(device))


def mlp(sizes: tuple[int, ...] = (1, 40, 40, 1), *, seed: int | None = None,
        device: torch.device | str = "cpu") -> MLP:
    """Build the sinusoid MLP; ``seed`` fixes its initialisation."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = MLP(sizes)
    return model.to(resolve_device(device))


def split_body_head(params: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """Names of body (``features.*``) and head (``head.*``) parameters, e.g. for ANIL."""
    head = [k for k in params if k.startswith("head.")]
    body = [k for k in params if not k.startswith("head.")]
    return body, head

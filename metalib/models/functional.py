"""What every task-batched backbone shares: the protocols the inner-loop engines use, per-task BatchNorm, and the
helpers that run one layer for a whole meta-batch with per-task or shared parameters.

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

__all__ = ["TaskBatchNorm", "TaskBatchedModel", "BodyHeadModel", "TRAINING_BATCHNORM", "per_task", "linear_tasks",
           "conv_one_channel_nhwc", "conv_tasks", "TaskBatchedBackbone", "batchnorm_tasks", "sequential_tasks",
           "split_body_head"]

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


def conv_one_channel_nhwc(x: Tensor, w: Tensor, b: Tensor, layer: nn.Conv2d) -> Tensor:
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


def per_task(p: Tensor, tasks: int, layer_param: Tensor) -> Tensor:
    """``[B, *shape]`` per-task parameters pass through; shared ones are broadcast (a view, no copy)."""
    if p.dim() == layer_param.dim():
        # unsqueeze, not expand, for one task: its backward is a view, expand's is a summation kernel
        return p.unsqueeze(0) if tasks == 1 else p.expand(tasks, *p.shape)
    if p.dim() == layer_param.dim() + 1 and p.shape[0] == tasks:
        return p
    raise ValueError(f"parameter of shape {tuple(p.shape)} fits neither {tuple(layer_param.shape)} "
                     f"nor [{tasks}, *{tuple(layer_param.shape)}]")


def linear_tasks(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))




class TaskBatchedBackbone(nn.Module):
    """What conv4 and ResNet-12 share: ``features`` then a linear ``head`` (``nn.Identity`` for an embedding), run
    per task or for a whole meta-batch; a subclass writes its body once, in ``embed_tasks``."""

    features: nn.Module
    head: nn.Module

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def embed_tasks(self, params: dict[str, Tensor], x: Tensor, second_order: bool = False,
                    channels_last: bool = False) -> Tensor:
        raise NotImplementedError

    def forward_tasks(self, params: dict[str, Tensor], x: Tensor, second_order: bool = False,
                      channels_last: bool = False) -> Tensor:
        """Every task of a meta-batch in one pass: ``x`` is ``[B, n, C, H, W]``, each parameter is either shared (its
        usual shape) or per task (``[B, *shape]``); returns ``[B, n, out]``. ``second_order`` and ``channels_last``
        are the engines' hints (:class:`TaskBatchedModel`); they never change the numbers."""
        return self.head_tasks(params, self.embed_tasks(params, x, second_order, channels_last))

    def head_tasks(self, params: dict[str, Tensor], h: Tensor) -> Tensor:
        """The head on embeddings ``h`` ``[B, n, D]``: ``[B, n, n_classes]`` (``h`` itself without a head)."""
        if isinstance(self.head, nn.Identity):
            return h
        B = h.shape[0]
        return linear_tasks(h, per_task(params["head.weight"], B, self.head.weight),
                            per_task(params["head.bias"], B, self.head.bias))


def conv_tasks(h: Tensor, weight: Tensor, bias: Tensor | None, tasks: int, layer: nn.Conv2d,
               channels_last: bool) -> Tensor:
    """``layer`` applied to every task of ``h`` ``[n, B*C, H, W]`` (tasks stacked along channels) as one grouped
    convolution, with per-task ``weight`` ``[B, *shape]`` (and ``bias``) already broadcast by :func:`per_task`."""
    if channels_last and tasks == 1 and h.shape[1] == 1 and bias is not None and layer.stride == (1, 1):
        return conv_one_channel_nhwc(h, weight[0], bias[0], layer)
    h = F.conv2d(h, weight.flatten(0, 1), None if bias is None else bias.flatten(), stride=layer.stride,
                 padding=layer.padding, groups=tasks)
    return h.contiguous(memory_format=torch.channels_last) if channels_last else h


def batchnorm_tasks(h: Tensor, weight: Tensor, bias: Tensor, layer: "TaskBatchNorm", second_order: bool) -> Tensor:
    """``layer`` on ``h`` ``[n, B*C, H, W]``: statistics per task and channel, per-task ``weight``/``bias`` ``[B, C]``.
    Fused for passes differentiated once; the unfused form's double backward is much cheaper (BENCHMARKS.md)."""
    return layer.normalize(h, weight.flatten(), bias.flatten(), fused=not second_order)


def sequential_tasks(layers: nn.Sequential, prefix: str, params: dict[str, Tensor], x: Tensor, second_order: bool = False,
                     channels_last: bool = False) -> Tensor:
    """``layers`` (Conv2d, TaskBatchNorm, and per-channel layers such as ReLU and MaxPool2d, optionally ending with
    Flatten) for a whole meta-batch: ``x`` ``[B, n, C, H, W]`` -> ``[B, n, ...]``, each layer's parameters taken from
    ``params`` under ``prefix`` + its index (shared, or per task ``[B, *shape]``). Tasks are stacked along channels,
    so convolutions are grouped and BatchNorm's statistics are per task."""
    B, n = x.shape[:2]
    h = x.transpose(0, 1).reshape(n, -1, *x.shape[3:])
    for i, layer in enumerate(layers):
        if isinstance(layer, (nn.Conv2d, TaskBatchNorm)):
            w = per_task(params[f"{prefix}{i}.weight"], B, layer.weight)
            b = per_task(params[f"{prefix}{i}.bias"], B, layer.bias)
            h = conv_tasks(h, w, b, B, layer, channels_last) if isinstance(layer, nn.Conv2d) \
                else batchnorm_tasks(h, w, b, layer, second_order)
        elif isinstance(layer, nn.Flatten):
            return h.reshape(n, B, -1).transpose(0, 1)  # [B, n, features]
        else:  # ReLU, MaxPool2d: per channel, so per task
            h = layer(h)
    return h.reshape(n, B, -1, *h.shape[2:]).transpose(0, 1)  # [B, n, C, H, W]


def split_body_head(params: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """Names of body (``features.*``) and head (``head.*``) parameters, e.g. for ANIL."""
    head = [k for k in params if k.startswith("head.")]
    body = [k for k in params if not k.startswith("head.")]
    return body, head

"""What the single-task lessons share: a task's examples as ``(x, y)`` tensors, the data of a training run, and
the functions that read them."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["Examples", "Data", "LossFn", "data_at", "loss_on", "split_episode", "classification_scores"]

Examples = tuple[Tensor, Tensor]  # inputs and targets of one set (training, validation or test)
#: Training data: one fixed ``(x, y)`` set (full-batch GD) or ``step -> (x, y)`` (minibatch SGD).
Data = Examples | Callable[[int], Examples]
LossFn = Callable[[Tensor, Tensor], Tensor]


def data_at(data: Data, step: int) -> Examples:
    """The examples training step ``step`` uses: the fixed set, or ``data(step)``."""
    return data(step) if callable(data) else data


def loss_on(model: nn.Module, params: Mapping[str, Tensor], batch: Examples, loss_fn: LossFn = F.mse_loss) -> Tensor:
    """``loss_fn(model(x), y)`` with ``params`` substituted for the model's weights."""
    x, y = batch
    return loss_fn(functional_call(model, dict(params), (x,)), y)


def split_episode(task, pool: int = 1) -> tuple[Examples, Examples, Examples]:
    """One classification episode (a ``TaskBatch`` of one task) as a single-task problem: the support set is
    the training data, the query set is halved per class into validation and test data. Images are
    average-pooled by ``pool``, flattened, and standardised with the training set's statistics."""
    def flat(x: Tensor) -> Tensor:
        return F.avg_pool2d(x, pool).flatten(1)
    x_tr, y_tr = flat(task.support_x[0]), task.support_y[0]
    mean, std = x_tr.mean(0), x_tr.std(0) + 0.1
    x_q, y_q = (flat(task.query_x[0]) - mean) / std, task.query_y[0]
    ways = int(y_tr.max()) + 1
    idx = torch.arange(len(y_q), device=y_q.device).view(ways, -1)  # queries are grouped by class
    half = idx.shape[1] // 2
    val_idx, test_idx = idx[:, :half].flatten(), idx[:, half:].flatten()
    return ((x_tr - mean) / std, y_tr), (x_q[val_idx], y_q[val_idx]), (x_q[test_idx], y_q[test_idx])


def classification_scores(model: nn.Module, params: Mapping[str, Tensor], data: Mapping[str, Examples]) -> dict[str, float]:
    """``{name}_loss`` (cross-entropy) and ``{name}_acc`` of trained ``params`` on each named batch."""
    out = {}
    with torch.no_grad():
        for name, (x, y) in data.items():
            logits = functional_call(model, dict(params), (x,))
            out[f"{name}_loss"] = F.cross_entropy(logits, y).item()
            out[f"{name}_acc"] = (logits.argmax(-1) == y).float().mean().item()
    return out

"""Prototypical Networks (Snell et al., 2017): metric-based, no inner loop."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..inner import forward_adapted
from ..problems import CLASSIFICATION
from ..tasks import TaskBatch
from ..types import Grads
from .base import MetaLearner

__all__ = ["ProtoNet", "protonet"]


class ProtoNet(MetaLearner):
    """Class prototypes = mean support embedding; queries are classified by a softmax over negative
    squared Euclidean distances. Loss and accuracy come from :data:`~metalib.problems.CLASSIFICATION`.

    Support and query images go through the embedding network in one batch, so BatchNorm
    statistics are per task (transductive), as for the MAML family.
    """

    name = "protonet"
    problem = CLASSIFICATION

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def logits(self, batch: TaskBatch) -> Tensor:
        """Query logits ``[B, N*Q, N]``: negative squared distances to the class prototypes."""
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        z = forward_adapted(self.model, dict(self.model.named_parameters()), x)  # all tasks, BatchNorm per task
        n_support = batch.support_x.shape[1]
        zs, zq = z[:, :n_support], z[:, n_support:]
        ways = int(batch.support_y.max()) + 1
        onehot = F.one_hot(batch.support_y, ways).to(z.dtype)  # [B, N*K, N]
        protos = onehot.transpose(1, 2) @ zs / onehot.sum(1).unsqueeze(-1)  # [B, N, D]
        # |q - p|^2 = |q|^2 - 2 q.p + |p|^2: no [B, N*Q, N, D] intermediate for wide embeddings
        sq = zq.pow(2).sum(-1, keepdim=True) - 2 * zq @ protos.transpose(1, 2) + protos.pow(2).sum(-1).unsqueeze(1)
        return -sq

    def meta_gradient(self, batch: TaskBatch) -> tuple[Grads, dict[str, float]]:
        logits = self.logits(batch)
        loss = self.problem.task_loss(logits, batch.query_y).mean()
        score = self.problem.task_score(logits.detach(), batch.query_y).mean()
        return self._grads(loss), {"loss": loss.item(), self.problem.score_name: score.item()}

    def evaluate_batch(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        with torch.no_grad():
            return self.problem.task_score(self.logits(batch), batch.query_y)


def protonet(model: nn.Module) -> ProtoNet:
    """Prototypical Networks on an embedding model (e.g. ``conv4(n_classes=0)``)."""
    return ProtoNet(model)

"""Prototypical Networks (Snell et al., 2017): metric-based, no inner loop."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..params import Params
from ..tasks import TaskBatch
from .base import EpisodeClassifier, embed_episode
from .registry import LearnerSpec, NoSettings, register

__all__ = ["ProtoNet", "protonet"]


class ProtoNet(EpisodeClassifier):
    """Class prototypes = mean support embedding; queries are classified by a softmax over negative
    squared Euclidean distances. Loss and accuracy come from :data:`~metalib.problems.CLASSIFICATION`.

    Support and query images go through the embedding network in one batch, so BatchNorm
    statistics are per task (transductive), as for the MAML family.
    """

    name = "protonet"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.model.named_parameters())

    def logits(self, batch: TaskBatch) -> Tensor:
        """Query logits ``[B, N*Q, N]``: negative squared distances to the class prototypes."""
        return self.logits_with(self.meta_parameters(), batch)

    def logits_with(self, params: Params, batch: TaskBatch) -> Tensor:
        zs, zq, ways = embed_episode(self.model, batch, params)
        onehot = F.one_hot(batch.support_y, ways).to(zs.dtype)  # [B, N*K, N]
        protos = onehot.transpose(1, 2) @ zs / onehot.sum(1).unsqueeze(-1)  # [B, N, D]
        # |q - p|^2 = |q|^2 - 2 q.p + |p|^2: no [B, N*Q, N, D] intermediate for wide embeddings
        sq = zq.pow(2).sum(-1, keepdim=True) - 2 * zq @ protos.transpose(1, 2) + protos.pow(2).sum(-1).unsqueeze(1)
        return -sq


def protonet(model: nn.Module) -> ProtoNet:
    """Prototypical Networks on an embedding model (e.g. ``conv4(n_classes=0)``)."""
    return ProtoNet(model)


register(LearnerSpec("protonet", NoSettings, lambda model, s, ctx: protonet(model),
                     "Prototypical Networks: nearest class mean in a learned embedding", model="embedding",
                     problems=("classification",), problem_note="classifies with a head built from the support set", inner_loop=False))

"""Relation Networks (Sung et al., 2018): a learned comparison of feature maps instead of a fixed distance.

The embedding keeps spatial maps (conv4 pooling in its first two blocks only: 64 x 7 x 7 for 28 x 28 images). A
class is the sum of its support maps; each (class, query) pair is concatenated along channels and the *relation
module* (two [3x3 conv, BatchNorm, 2x2 max-pool, ReLU] blocks and two linear layers, 8 hidden units) scores it::

    r(c, q) = sigmoid( relation( [sum_{i : y_i = c} f(x_i), f(q)] ) )

Training regresses the scores on the one-hot labels (mean squared error, as the paper does: a relation score is a
similarity, not a class probability); a query's class is the highest score. The learner's logits are the scores
before the sigmoid, so that a softmax of them gives :func:`metalib.predict.predict` probabilities with the same
ranking. BatchNorm in the relation module normalises over a task's pairs (per task, as everywhere in metalib).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ArgumentError
from ..models import TaskBatchNorm
from ..models.functional import sequential_tasks
from ..params import Params
from ..tasks import TaskBatch
from ..utils import seeded
from .base import EpisodeClassifier, embed_episode
from .registry import LearnerSpec, NoSettings, register

__all__ = ["RelationNet", "RelationModule", "relation"]


class RelationModule(nn.Module):
    """Scores pairs of ``channels`` x ``side`` x ``side`` maps concatenated along channels: two conv blocks (each
    halving the side), then ``hidden`` ReLU units and one output (a logit)."""

    def __init__(self, channels: int, side: int, hidden: int = 8):
        super().__init__()
        if side < 4:
            raise ArgumentError(f"the relation module needs feature maps of at least 4x4, got {side}x{side}: embed "
                                f"with conv4(0, pooled_blocks=2) and images of at least 16 pixels")
        self.features = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 3, padding=1), TaskBatchNorm(channels), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1), TaskBatchNorm(channels), nn.MaxPool2d(2), nn.ReLU(),
            nn.Flatten())
        self.fc1 = nn.Linear(channels * (side // 4) ** 2, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def scores_with(self, params: Params, pairs: Tensor) -> Tensor:
        """Logits ``[B, P]`` of pairs ``[B, P, 2C, H, W]``, with the module's parameters in ``params`` (keyed as
        its own ``named_parameters()``); BatchNorm statistics over each task's pairs."""
        h = sequential_tasks(self.features, "features.", params, pairs)
        h = F.relu(F.linear(h, params["fc1.weight"], params["fc1.bias"]))
        return F.linear(h, params["fc2.weight"], params["fc2.bias"]).squeeze(-1)


class RelationNet(EpisodeClassifier):
    """A relation module on the feature maps of an embedding (support and query embedded in one batch per task)."""

    name = "relation"

    def __init__(self, model: nn.Module, seed: int | None = None):
        super().__init__()
        shape = getattr(model, "feature_shape", None)
        if shape is None or len(shape) != 3:
            raise ArgumentError("relation needs an embedding with spatial feature maps: conv4(0, pooled_blocks=2)")
        self.model = model
        with seeded(seed):
            self.relation = RelationModule(shape[0], shape[1])

    def logits(self, batch: TaskBatch) -> Tensor:
        """Query logits ``[B, N*Q, N]``: the relation module's score of each (query, class) pair, before the sigmoid."""
        return self.logits_with(self.meta_parameters(), batch)

    def logits_with(self, params: Params, batch: TaskBatch) -> Tensor:
        model = {k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")}
        relation = {k.removeprefix("relation."): v for k, v in params.items() if k.startswith("relation.")}
        zs, zq, ways = embed_episode(self.model, batch, model)
        shape = self.model.feature_shape
        onehot = F.one_hot(batch.support_y, ways).to(zs.dtype)
        classes = (onehot.transpose(1, 2) @ zs).unflatten(-1, shape)   # [B, N, C, H, W]: the sum of each class's maps
        queries = zq.unflatten(-1, shape)                              # [B, Q, C, H, W]
        B, Q, N = queries.shape[0], queries.shape[1], ways
        pairs = torch.cat([classes.unsqueeze(1).expand(B, Q, *classes.shape[1:]),
                           queries.unsqueeze(2).expand(B, Q, N, *shape)], dim=3)  # [B, Q, N, 2C, H, W]
        return self.relation.scores_with(relation, pairs.flatten(1, 2)).view(B, Q, N)

    def episode_loss(self, logits: Tensor, query_y: Tensor) -> Tensor:
        """Mean squared error between the relation scores and the one-hot labels, per task ``[B]``."""
        target = F.one_hot(query_y, logits.shape[-1]).to(logits.dtype)
        return (torch.sigmoid(logits) - target).pow(2).mean(dim=(1, 2))


def relation(model: nn.Module, *, seed: int | None = None) -> RelationNet:
    """Relation Networks on an embedding with spatial maps (``conv4(0, pooled_blocks=2)``); ``seed`` fixes the
    relation module's initialisation."""
    return RelationNet(model, seed)


register(LearnerSpec("relation", NoSettings, lambda model, s, ctx: relation(model, seed=ctx.seed),
                     "Relation Networks: a learned relation module scores (class, query) pairs of feature maps",
                     model="feature_maps", problems=("classification",),
                     problem_note="classifies with a head built from the support set", inner_loop=False))

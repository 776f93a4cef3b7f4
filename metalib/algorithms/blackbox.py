"""Black-box (model-based) meta-learners: a network reads the support set and predicts the queries, with no inner
optimisation and no metric fixed by hand. The third family beside optimisation-based (MAML) and metric-based
(ProtoNets) learners.

* :class:`CNP`, a Conditional Neural Process (Garnelo et al., 2018) for regression: each support pair ``(x, y)`` is
  encoded, the codes are averaged into one task representation ``r`` (so the prediction is invariant to the order
  of the support set), and a decoder maps ``(r, x*)`` to a Gaussian over ``y*``; trained by its negative
  log-likelihood (:data:`~metalib.problems.GAUSSIAN`).
* :class:`AttentionLearner` for N-way classification (in the spirit of SNAIL, Mishra et al., 2018, and CS330's
  black-box homework, with attention over a *set* instead of a sequence): images are embedded by a conv net, each
  support token carries its label one-hot, query tokens carry zeros, and a transformer whose queries attend to the
  support tokens (and themselves) outputs the query logits. No positional encoding: the support set is a set.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ArgumentError
from ..inner import check_batchnorm
from ..problems import GAUSSIAN
from ..tasks import TaskBatch
from ..utils import seeded
from ..params import Params
from .base import EpisodeClassifier, MetaLearner, embed_episode
from .registry import LearnerSpec, Settings, register, setting

__all__ = ["CNP", "cnp", "AttentionLearner", "attention_learner", "CNPSettings", "AttentionSettings"]


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


class CNP(MetaLearner):
    """Conditional Neural Process: encoder ``[x, y] -> r_i``, ``r = mean_i r_i``, decoder ``[r, x*] -> (mu, sigma)``."""

    name = "cnp"
    problem = GAUSSIAN
    test_steps = 0

    def __init__(self, x_dim: int = 1, y_dim: int = 1, hidden: int = 128, layers: int = 3):
        super().__init__()
        if min(x_dim, y_dim, hidden, layers) < 1:
            raise ArgumentError(f"x_dim, y_dim, hidden and layers must be >= 1, got {x_dim}, {y_dim}, {hidden}, {layers}")
        self.encoder = _mlp([x_dim + y_dim] + [hidden] * layers)
        self.decoder = _mlp([hidden + x_dim] + [hidden] * (layers - 1) + [2 * y_dim])

    def predict(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """``[B, m, 2 * y_dim]``: the predictive means then raw scales at ``query_x`` ``[B, m, x_dim]``."""
        r = self.encoder(torch.cat([support_x, support_y], -1)).mean(1, keepdim=True)  # [B, 1, hidden]
        return self.decoder(torch.cat([r.expand(-1, query_x.shape[1], -1), query_x], -1))

    def meta_gradient(self, batch: TaskBatch) -> tuple[Params, dict[str, float]]:
        out = self.predict(batch.support_x, batch.support_y, batch.query_x)
        loss = self.problem.task_loss(out, batch.query_y).mean()
        score = self.problem.task_score(out.detach(), batch.query_y).mean()
        return self._grads(loss), {"loss": loss.item(), self.problem.score_name: score.item()}

    def query_outputs(self, batch: TaskBatch, steps: int | None = None, batchnorm: str = "transductive") -> Tensor:
        """Both BatchNorm modes are the same here: the CNP has no batch statistics and its queries are independent."""
        check_batchnorm(batchnorm)
        with torch.no_grad():
            return self.predict(batch.support_x, batch.support_y, batch.query_x)

    def evaluate_batch(self, batch: TaskBatch, steps: int | None = None, batchnorm: str = "transductive") -> Tensor:
        return self.problem.task_score(self.query_outputs(batch, steps, batchnorm), batch.query_y)


def cnp(model: nn.Module | None = None, *, x_dim: int = 1, y_dim: int = 1, hidden: int = 128, layers: int = 3,
        seed: int | None = None) -> CNP:
    """A CNP (it brings its own networks: ``model`` must be None; it is accepted for ``make_learner``'s signature)."""
    if model is not None:
        raise ArgumentError("cnp builds its own encoder and decoder: pass model=None")
    with seeded(seed):
        return CNP(x_dim, y_dim, hidden, layers)


class AttentionLearner(EpisodeClassifier):
    """Embedding ``model`` (e.g. ``conv4(0)``), then ``blocks`` pre-norm transformer layers of width ``width`` over
    the support and query tokens of each task; queries attend to the support tokens and to themselves only."""

    name = "attention"

    def __init__(self, model: nn.Module, ways: int, embedding_dim: int, *, width: int = 128, heads: int = 4,
                 blocks: int = 2):
        super().__init__()
        if ways < 2 or width % heads:
            raise ArgumentError(f"need ways >= 2 and width divisible by heads, got ways={ways}, width={width}, heads={heads}")
        self.model, self.ways = model, ways
        self.tokens = nn.Linear(embedding_dim + ways, width)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.attention = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.out = nn.Linear(width, ways)

    def logits(self, batch: TaskBatch) -> Tensor:
        zs, zq, ways = embed_episode(self.model, batch)
        if ways > self.ways:
            raise ArgumentError(f"this learner was built for at most {self.ways} ways, got a {ways}-way task")
        labels = F.one_hot(batch.support_y, self.ways).to(zs.dtype)
        no_labels = zq.new_zeros(*zq.shape[:2], self.ways)  # queries carry no label
        tokens = self.tokens(torch.cat([torch.cat([zs, labels], -1), torch.cat([zq, no_labels], -1)], 1))
        n_s, n = zs.shape[1], zs.shape[1] + zq.shape[1]
        blocked = torch.ones(n, n, dtype=torch.bool, device=zs.device)  # True: may not attend
        blocked[:, :n_s] = False                                          # everyone sees the support set
        blocked[n_s:, n_s:] = ~torch.eye(n - n_s, dtype=torch.bool, device=zs.device)  # a query sees only itself
        return self.out(self.attention(tokens, mask=blocked)[:, n_s:])[..., :ways]


def attention_learner(model: nn.Module, *, ways: int = 5, width: int = 128, heads: int = 4, blocks: int = 2,
                      embedding_dim: int | None = None, seed: int | None = None) -> AttentionLearner:
    """The attention black-box learner on an embedding model; ``embedding_dim`` defaults to the model's
    ``embedding_dim`` attribute (conv4's). ``seed`` fixes the initialisation of the layers it adds (the
    embedding model brings its own)."""
    dim = embedding_dim or getattr(model, "embedding_dim", None)
    if dim is None:
        raise ArgumentError("pass embedding_dim: the model has no embedding_dim attribute")
    with seeded(seed):
        return AttentionLearner(model, ways, dim, width=width, heads=heads, blocks=blocks)


@dataclass(frozen=True, kw_only=True)
class CNPSettings(Settings):
    width: int = setting(128, "cnp/attention: width of the learner's own layers", low=1)
    layers: int = setting(3, "cnp: layers of its encoder and of its decoder", low=1)


@dataclass(frozen=True, kw_only=True)
class AttentionSettings(Settings):
    width: int = setting(128, "cnp/attention: width of the learner's own layers", low=1)
    heads: int = setting(4, "attention: heads of each transformer layer (dividing --width)", low=1)
    blocks: int = setting(2, "attention: transformer layers", low=1)

    def check_task(self, problem: str, shots: int | None = None) -> str | None:
        if self.width % self.heads:
            return f"attention: width {self.width} is not divisible by heads {self.heads}"
        return super().check_task(problem, shots)


register(LearnerSpec("cnp", CNPSettings,
                     lambda model, s, ctx: cnp(model, hidden=s.width, layers=s.layers, seed=ctx.seed),
                     "a conditional neural process (black box, regression)", model="none", problems=("regression",),
                     problem_note="is a regression learner (for classification, the black-box learner is attention)",
                     inner_loop=False))
register(LearnerSpec("attention", AttentionSettings,
                     lambda model, s, ctx: attention_learner(model, ways=ctx.ways or 5, width=s.width, heads=s.heads,
                                                             blocks=s.blocks, seed=ctx.seed),
                     "a transformer over the support and query tokens (black box, classification)", model="embedding",
                     problems=("classification",), problem_note="classifies with a head built from the support set", inner_loop=False))

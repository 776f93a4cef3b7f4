"""R2D2 (Bertinetto et al., 2019), the ridge-regression head of MetaOptNet (Lee et al., 2019): a closed-form learner.

Each task's head is the ridge-regression solution on the embedded support set ``Z`` ``[n, d]`` with one-hot targets
``Y`` ``[n, N]``, computed in the Woodbury form that needs an ``n x n`` solve (``n`` = ways x shots, far below the
embedding width ``d`` in few-shot learning)::

    W = Z^T (Z Z^T + lambda I_n)^{-1} Y        ( = (Z^T Z + lambda I_d)^{-1} Z^T Y )
    logits(q) = scale * (z_q W) + bias

The solve is differentiable, so the meta-gradient reaches the embedding, ``lambda``, ``scale`` and ``bias``
exactly, with no inner loop to unroll: the head is the inner problem's exact minimiser. ``lambda`` and ``scale``
are learned in log space (they stay positive).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ArgumentError
from ..params import Params
from ..tasks import TaskBatch
from .base import EpisodeClassifier, embed_episode
from .registry import LearnerSpec, Settings, register, setting

__all__ = ["R2D2", "r2d2", "ridge_head", "R2D2Settings"]


def ridge_head(zs: Tensor, ys: Tensor, ways: int, lam: Tensor | float) -> Tensor:
    """Per-task ridge weights ``[B, d, N]`` from support embeddings ``zs`` ``[B, n, d]`` and labels ``ys`` ``[B, n]``,
    in the Woodbury form (an ``n x n`` solve per task)."""
    n = zs.shape[1]
    targets = F.one_hot(ys, ways).to(zs.dtype)                                      # [B, n, N]
    gram = zs @ zs.transpose(1, 2) + lam * torch.eye(n, dtype=zs.dtype, device=zs.device)  # [B, n, n]
    return zs.transpose(1, 2) @ torch.linalg.solve(gram, targets)                   # [B, d, N]


class R2D2(EpisodeClassifier):
    """Closed-form ridge-regression head on a learned embedding; ``lam``, ``scale`` and ``bias`` are learned too
    (support and query embedded in one batch per task, as for ProtoNets)."""

    name = "r2d2"

    def __init__(self, model: nn.Module, *, lam: float = 1.0, scale: float = 1.0):
        super().__init__()
        if not (lam > 0 and scale > 0):
            raise ArgumentError(f"lam and scale must be > 0, got lam={lam}, scale={scale}")
        self.model = model
        self.log_lam = nn.Parameter(torch.tensor(math.log(lam)))
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def logits(self, batch: TaskBatch) -> Tensor:
        """Query logits ``[B, N*Q, N]`` of each task's ridge head."""
        return self.logits_with(self.meta_parameters(), batch)

    def logits_with(self, params: Params, batch: TaskBatch) -> Tensor:
        model = {k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")}
        zs, zq, ways = embed_episode(self.model, batch, model)
        w = ridge_head(zs, batch.support_y, ways, params["log_lam"].exp().to(zs.dtype))
        return params["log_scale"].exp().to(zs.dtype) * (zq @ w) + params["bias"].to(zs.dtype)

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "lambda": self.log_lam.exp().item(), "scale": self.log_scale.exp().item()}


def r2d2(model: nn.Module, *, lam: float = 1.0, scale: float = 1.0) -> R2D2:
    """R2D2 / MetaOptNet-ridge on an embedding model (e.g. ``conv4(n_classes=0)``)."""
    return R2D2(model, lam=lam, scale=scale)


@dataclass(frozen=True, kw_only=True)
class R2D2Settings(Settings):
    ridge_lambda: float = setting(1.0, "r2d2: where the learned ridge penalty starts", low=0, strict=True)
    logit_scale: float = setting(1.0, "matching/r2d2: where the learned logit scale starts (of the cosine "
                                 "attention; of the ridge head)", low=0, strict=True)


register(LearnerSpec("r2d2", R2D2Settings, lambda model, s, ctx: r2d2(model, lam=s.ridge_lambda, scale=s.logit_scale),
                     "R2D2 / MetaOptNet-ridge: a closed-form ridge-regression head on a learned embedding",
                     model="embedding", problems=("classification",), problem_note="classifies with a head built from the support set", inner_loop=False))

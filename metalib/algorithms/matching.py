"""Matching Networks (Vinyals et al., 2016): a query's label is an attention-weighted vote of the support labels.

With embeddings ``f`` (queries) and ``g`` (support), the attention over the support set is a softmax of cosine
similarities, and the class probabilities are the attention each class's support examples receive::

    a(q, i) = softmax_i( s * cos(f(q), g(x_i)) )        p(c | q) = sum_{i : y_i = c} a(q, i)

Training minimises ``-log p(y_q | q)`` over the query set, episode by episode. ``s`` is a learned logit scale (a
temperature): cosines lie in [-1, 1] (in [0, 1] after conv4's final ReLU), so without it the attention can never
be sharp; Vinyals et al. write the softmax without one, most reimplementations add it.

*Full context embeddings* (``full_context=True``) make both embeddings depend on the whole support set: ``g`` runs a
bidirectional LSTM over the support embeddings (plus a skip connection), and ``f`` an LSTM that attends to ``g``'s
outputs for ``context_steps`` steps (Vinyals et al., appendix). The LSTMs are written out in functional form, so the
learner's logits are a pure function of its meta-parameters (and train over worker threads on a CPU).
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
from ..utils import seeded
from .base import EpisodeClassifier, embed_episode
from .registry import LearnerSpec, Settings, register, setting

__all__ = ["MatchingNet", "matching", "matching_log_probs", "lstm_cell", "MatchingSettings"]


def matching_log_probs(zs: Tensor, ys: Tensor, zq: Tensor, ways: int, scale: Tensor | float) -> Tensor:
    """``log p(c | q)`` ``[B, Q, N]`` of the cosine attention over support embeddings ``zs`` ``[B, S, D]`` with labels
    ``ys`` ``[B, S]``, for query embeddings ``zq`` ``[B, Q, D]``; computed in log space (a class's probability is a
    log-sum-exp over its own support examples, minus the one over all of them)."""
    sims = scale * (F.normalize(zq, dim=-1) @ F.normalize(zs, dim=-1).transpose(1, 2))  # [B, Q, S]
    member = F.one_hot(ys, ways).to(sims.dtype).log()                                      # [B, S, N]: 0 or -inf
    per_class = torch.logsumexp(sims.unsqueeze(-1) + member.unsqueeze(1), dim=2)           # [B, Q, N]
    return per_class - torch.logsumexp(sims, dim=-1, keepdim=True)


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
              ) -> tuple[Tensor, Tensor]:
    """One LSTM step with ``torch.nn.LSTM``'s gate order (input, forget, cell, output) and weights: ``(h, c)``."""
    i, f, g, o = (F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class MatchingNet(EpisodeClassifier):
    """Cosine attention over the support set on a learned embedding (support and query embedded in one batch per
    task, as for ProtoNets); optionally full context embeddings. ``log_scale`` is learned."""

    name = "matching"

    def __init__(self, model: nn.Module, *, scale: float = 10.0, full_context: bool = False, context_steps: int = 5,
                 seed: int | None = None):
        super().__init__()
        if not scale > 0 or context_steps < 1:
            raise ArgumentError(f"scale must be > 0 and context_steps >= 1, got scale={scale}, "
                                f"context_steps={context_steps}")
        self.model = model
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.full_context, self.context_steps = full_context, context_steps
        if full_context:
            width = model.embedding_dim
            with seeded(seed):
                self.support_lstm = nn.LSTM(width, width, bidirectional=True, batch_first=True)
                self.query_lstm = nn.LSTMCell(width, width)

    def logits(self, batch: TaskBatch) -> Tensor:
        """Query log-probabilities ``[B, N*Q, N]`` (logits whose softmax is the attention's class probabilities)."""
        return self.logits_with(self.meta_parameters(), batch)

    def logits_with(self, params: Params, batch: TaskBatch) -> Tensor:
        model = {k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")}
        zs, zq, ways = embed_episode(self.model, batch, model)
        if self.full_context:
            zs = self._context_support(params, zs)
            zq = self._context_queries(params, zq, zs)
        return matching_log_probs(zs, batch.support_y, zq, ways, params["log_scale"].exp().to(zs.dtype))

    def _context_support(self, params: Params, zs: Tensor) -> Tensor:
        """``g(x_i, S) = h_forward_i + h_backward_i + g'(x_i)``: a bidirectional LSTM over the support sequence."""
        out = zs
        for suffix, order in (("", range(zs.shape[1])), ("_reverse", reversed(range(zs.shape[1])))):
            w = [params[f"support_lstm.{k}_l0{suffix}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            h = c = zs.new_zeros(zs.shape[0], zs.shape[2])
            states = [None] * zs.shape[1]
            for t in order:
                h, c = lstm_cell(zs[:, t], h, c, *w)
                states[t] = h
            out = out + torch.stack(states, dim=1)
        return out

    def _context_queries(self, params: Params, zq: Tensor, gs: Tensor) -> Tensor:
        """``f(q, S)``: an LSTM whose state reads, at each of ``context_steps`` steps, an attention over ``g``'s
        outputs (the read-out is added to the hidden state fed back, as in Vinyals et al.'s appendix)."""
        w = [params[f"query_lstm.{k}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        h = c = torch.zeros_like(zq)
        readout = torch.zeros_like(zq)
        for _ in range(self.context_steps):
            h, c = lstm_cell(zq, h + readout, c, *w)
            h = h + zq
            readout = torch.softmax(h @ gs.transpose(1, 2), dim=-1) @ gs  # [B, Q, D]
        return h

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "scale": self.log_scale.exp().item(), "full_context": self.full_context,
                **({"context_steps": self.context_steps} if self.full_context else {})}


def matching(model: nn.Module, *, scale: float = 10.0, full_context: bool = False, context_steps: int = 5,
             seed: int | None = None) -> MatchingNet:
    """Matching Networks on an embedding model (e.g. ``conv4(n_classes=0)``), the cosine attention's logit scale
    starting at ``scale``; ``full_context=True`` adds the full context embeddings (their LSTMs initialised from
    ``seed``)."""
    return MatchingNet(model, scale=scale, full_context=full_context, context_steps=context_steps, seed=seed)


@dataclass(frozen=True, kw_only=True)
class MatchingSettings(Settings):
    logit_scale: float = setting(10.0, "matching/r2d2: where the learned logit scale starts (of the cosine "
                                 "attention; of the ridge head)", low=0, strict=True)
    full_context: bool = setting(False, "matching: full context embeddings (LSTMs over the support set)")
    context_steps: int = setting(5, "matching: attention steps of the query LSTM with full context embeddings", low=1)


register(LearnerSpec("matching", MatchingSettings,
                     lambda model, s, ctx: matching(model, scale=s.logit_scale, full_context=s.full_context,
                                                    context_steps=s.context_steps, seed=ctx.seed),
                     "Matching Networks: cosine attention over the support set in a learned embedding",
                     model="embedding", problems=("classification",),
                     problem_note="classifies with a head built from the support set", inner_loop=False))

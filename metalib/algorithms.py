"""Meta-learning algorithms as configurations of the one inner-loop core (:mod:`metalib.inner`).

==========  =========================================================================
MAML        second-order meta-gradient through ``steps`` inner SGD steps
FOMAML      the same with inner gradients treated as constants (``first_order=True``)
Meta-SGD    MAML plus a learned inner learning rate per parameter entry
ANIL        MAML that adapts only the head; the body is shared and fixed per task
Reptile     first-order adaptation; the initialisation moves toward the adapted weights
ProtoNet    metric-based: no inner loop, classify queries by distance to class means
==========  =========================================================================

Every learner exposes the same three methods, which is all training, evaluation and the
distributed wrapper need:

* ``meta_gradient(batch) -> (grads, metrics)``: gradients for ``meta_parameters()``, averaged
  over the tasks of the batch, and detached per-batch metrics;
* ``evaluate_batch(batch, steps=None) -> scores [B]``: adapt (``steps`` at test time) and score
  each task's query set;
* ``meta_parameters() -> dict``: what the outer optimiser updates (and checkpoints hold).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .inner import CLASSIFICATION, REGRESSION, InnerConfig, Params, Problem, adapt, forward, task_losses
from .models import BATCHNORM_MODE, split_body_head
from .tasks import TaskBatch

__all__ = [
    "MetaLearner", "GradientMetaLearner", "Reptile", "ProtoNet",
    "maml", "fomaml", "metasgd", "anil", "reptile", "protonet", "pretrain", "make_learner", "ALGORITHMS",
]

Grads = dict[str, Tensor]


class MetaLearner(nn.Module):
    """Base class: an ``nn.Module`` holding the meta-parameters, so ``state_dict`` checkpoints it."""

    problem: Problem = CLASSIFICATION
    name: str = "learner"

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.named_parameters())

    def meta_gradient(self, batch: TaskBatch) -> tuple[Grads, dict[str, float]]:
        raise NotImplementedError

    def evaluate_batch(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        """Settings that belong next to any reported result."""
        return {"algorithm": self.name, "batchnorm": BATCHNORM_MODE}

    def _grads(self, loss: Tensor) -> Grads:
        params = self.meta_parameters()
        gs = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        return {k: (torch.zeros_like(p) if g is None else g) for (k, p), g in zip(params.items(), gs)}


class GradientMetaLearner(MetaLearner):
    """MAML, FOMAML, Meta-SGD and ANIL: one class, four configurations of :class:`InnerConfig`.

    ``learn_lr=True`` (Meta-SGD) adds a learned inner learning rate per entry of every adapted
    parameter, initialised to ``inner.lr``.
    """

    def __init__(self, model: nn.Module, inner: InnerConfig, *, learn_lr: bool = False, name: str = "maml"):
        super().__init__()
        self.model = model
        self.inner = inner
        self.problem = inner.problem
        self.name = name
        names = inner.adapt if inner.adapt is not None else [k for k, _ in model.named_parameters()]
        self.inner_lrs = nn.ParameterDict()
        if learn_lr:
            for k, p in model.named_parameters():
                if k in names:
                    self.inner_lrs[_key(k)] = nn.Parameter(torch.full_like(p.detach(), inner.lr))

    def params(self) -> Params:
        return dict(self.model.named_parameters())

    def lrs(self) -> Params | None:
        if len(self.inner_lrs) == 0:
            return None
        return {_unkey(k): v for k, v in self.inner_lrs.items()}

    def query_losses(self, batch: TaskBatch, cfg: InnerConfig | None = None) -> tuple[Tensor, Tensor]:
        """Per-task query losses and scores after adaptation, differentiable w.r.t. meta-parameters."""
        return task_losses(self.model, self.params(), batch.support_x, batch.support_y, batch.query_x,
                           batch.query_y, cfg or self.inner, self.lrs())

    def meta_gradient(self, batch: TaskBatch) -> tuple[Grads, dict[str, float]]:
        losses, scores = self.query_losses(batch)
        loss = losses.mean()
        return self._grads(loss), {"loss": loss.item(), self.problem.score_name: scores.mean().item()}

    def evaluate_batch(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        cfg = replace(self.inner, first_order=True, steps=self.inner.steps if steps is None else steps)
        params = {k: v.detach() for k, v in self.params().items()}
        lrs = self.lrs()
        lrs = None if lrs is None else {k: v.detach() for k, v in lrs.items()}
        _, scores = task_losses(self.model, params, batch.support_x, batch.support_y, batch.query_x,
                                batch.query_y, cfg, lrs)
        return scores

    def adapt(self, batch: TaskBatch, steps: int | None = None) -> Params:
        """Adapted parameters of every task (``[B, ...]`` each), detached: for plots and inspection."""
        cfg = replace(self.inner, first_order=True, steps=self.inner.steps if steps is None else steps)
        params = {k: v.detach() for k, v in self.params().items()}
        lrs = self.lrs()
        lrs = None if lrs is None else {k: v.detach() for k, v in lrs.items()}
        return {k: v.detach() for k, v in adapt(self.model, params, batch.support_x, batch.support_y, cfg, lrs).items()}

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "inner_steps": self.inner.steps, "inner_lr": self.inner.lr,
                "first_order": self.inner.first_order, "learned_lr": len(self.inner_lrs) > 0,
                "adapted": "head" if self.inner.adapt is not None else "all"}


class Reptile(MetaLearner):
    """Reptile (Nichol et al., 2018): adapt with plain SGD, then move the initialisation toward the result.

    The pseudo-gradient ``theta - mean_i(phi_i)`` is returned as the meta-gradient, so an outer SGD
    step with learning rate ``epsilon`` gives ``theta <- theta + epsilon * (mean_i phi_i - theta)``.
    """

    def __init__(self, model: nn.Module, inner: InnerConfig, name: str = "reptile"):
        super().__init__()
        self.model = model
        self.inner = replace(inner, first_order=True)
        self.problem = inner.problem
        self.name = name

    def meta_gradient(self, batch: TaskBatch) -> tuple[Grads, dict[str, float]]:
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        fast = adapt(self.model, params, batch.support_x, batch.support_y, self.inner)
        grads = {f"model.{k}": params[k] - fast[k].mean(0) for k in params}
        with torch.no_grad():  # the training score comes from the same adapted weights, not a second adaptation
            if hasattr(self.model, "forward_tasks"):
                out = self.model.forward_tasks(fast, batch.query_x)
            else:
                out = torch.stack([forward(self.model, {k: v[i] for k, v in fast.items()}, x)
                                   for i, x in enumerate(batch.query_x)])
        scores = self.problem.task_score(out, batch.query_y)
        return grads, {self.problem.score_name: scores.mean().item()}

    def evaluate_batch(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        cfg = replace(self.inner, steps=self.inner.steps if steps is None else steps)
        params = {k: v.detach() for k, v in self.model.named_parameters()}
        return task_losses(self.model, params, batch.support_x, batch.support_y, batch.query_x, batch.query_y, cfg)[1]

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "inner_steps": self.inner.steps, "inner_lr": self.inner.lr}


class ProtoNet(MetaLearner):
    """Prototypical Networks (Snell et al., 2017): class prototypes = mean support embedding;
    queries are classified by a softmax over negative squared Euclidean distances.

    Support and query images go through the embedding network in one batch, so BatchNorm
    statistics are per task (transductive), as for the MAML family.
    """

    name = "protonet"

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def logits(self, batch: TaskBatch) -> Tensor:
        """Query logits ``[B, N*Q, N]``: negative squared distances to the class prototypes."""
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        if hasattr(self.model, "forward_tasks"):  # all tasks in one pass, BatchNorm still per task
            z = self.model.forward_tasks(dict(self.model.named_parameters()), x)
        else:
            z = torch.stack([self.model(xi) for xi in x])
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
        loss = CLASSIFICATION.loss(logits.flatten(0, 1), batch.query_y.flatten())
        acc = (logits.argmax(-1) == batch.query_y).float().mean()
        return self._grads(loss), {"loss": loss.item(), "accuracy": acc.item()}

    def evaluate_batch(self, batch: TaskBatch, steps: int | None = None) -> Tensor:
        with torch.no_grad():
            logits = self.logits(batch)
        return (logits.argmax(-1) == batch.query_y).to(logits.dtype).mean(-1)


def _key(name: str) -> str:
    return name.replace(".", "__")


def _unkey(key: str) -> str:
    return key.replace("__", ".")


def _problem(problem: str | Problem) -> Problem:
    if isinstance(problem, Problem):
        return problem
    options = {"classification": CLASSIFICATION, "regression": REGRESSION}
    if problem not in options:
        raise ValueError(f"problem must be one of {list(options)}, got {problem!r}")
    return options[problem]


def maml(model: nn.Module, *, inner_lr: float = 0.4, steps: int = 1, first_order: bool = False,
         problem: str | Problem = "classification", strategy: str = "auto") -> GradientMetaLearner:
    """MAML (Finn et al., 2017): second-order meta-gradient through ``steps`` inner SGD steps."""
    cfg = InnerConfig(steps, inner_lr, first_order, None, strategy, _problem(problem))
    return GradientMetaLearner(model, cfg, name="fomaml" if first_order else "maml")


def fomaml(model: nn.Module, **kw) -> GradientMetaLearner:
    """First-order MAML: the query gradient at the adapted weights is the meta-gradient."""
    return maml(model, first_order=True, **kw)


def metasgd(model: nn.Module, *, inner_lr: float = 0.4, steps: int = 1, first_order: bool = False,
            problem: str | Problem = "classification", strategy: str = "auto") -> GradientMetaLearner:
    """Meta-SGD (Li et al., 2017): inner learning rates per parameter entry, meta-learned with the init."""
    cfg = InnerConfig(steps, inner_lr, first_order, None, strategy, _problem(problem))
    return GradientMetaLearner(model, cfg, learn_lr=True, name="metasgd")


def anil(model: nn.Module, *, inner_lr: float = 0.4, steps: int = 1, first_order: bool = False,
         problem: str | Problem = "classification", strategy: str = "auto") -> GradientMetaLearner:
    """ANIL (Raghu et al., 2020): only the head adapts in the inner loop."""
    _, head = split_body_head(dict(model.named_parameters()))
    if not head:
        raise ValueError("ANIL needs a model with 'head.*' parameters (see metalib.models)")
    cfg = InnerConfig(steps, inner_lr, first_order, tuple(head), strategy, _problem(problem))
    return GradientMetaLearner(model, cfg, name="anil")


def reptile(model: nn.Module, *, inner_lr: float = 0.4, steps: int = 5, problem: str | Problem = "classification",
            strategy: str = "auto") -> Reptile:
    """Reptile with ``steps`` inner SGD steps at ``inner_lr``; pair it with an outer SGD optimiser."""
    return Reptile(model, InnerConfig(steps, inner_lr, True, None, strategy, _problem(problem)))


def pretrain(model: nn.Module, *, inner_lr: float = 0.01, problem: str | Problem = "classification",
             strategy: str = "auto") -> GradientMetaLearner:
    """Joint pre-training baseline: minimise the loss over all tasks' data at the shared weights
    (the inner loop has 0 steps in training), then fine-tune at test time with ``inner_lr``
    via ``evaluate(..., steps=k)``."""
    cfg = InnerConfig(0, inner_lr, False, None, strategy, _problem(problem))
    return GradientMetaLearner(model, cfg, name="pretrain")


def protonet(model: nn.Module) -> ProtoNet:
    """Prototypical Networks on an embedding model (e.g. ``conv4(n_classes=0)``)."""
    return ProtoNet(model)


ALGORITHMS = {"maml": maml, "fomaml": fomaml, "metasgd": metasgd, "anil": anil, "reptile": reptile,
              "protonet": protonet, "pretrain": pretrain}


def make_learner(name: str, model: nn.Module, **kw) -> MetaLearner:
    """Build a learner by name: one of ``ALGORITHMS``."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name](model, **kw)

"""What every learner offers training, evaluation and distribution: the :class:`MetaLearner` contract."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from ..inner import check_batchnorm, forward_adapted, forward_inductive, per_query
from ..inner.per_task import PerTaskGradients
from ..inner.workers import chunks
from ..models import TRAINING_BATCHNORM, TaskBatchedModel
from ..problems import CLASSIFICATION, Problem
from ..tasks import TaskBatch
from ..params import Params

__all__ = ["MetaLearner", "EpisodeClassifier", "embed_episode", "adapted_outputs"]


class MetaLearner(nn.Module):
    """Base class: an ``nn.Module`` holding the meta-parameters, so ``state_dict`` checkpoints it.

    * ``meta_parameters() -> dict``: what the outer optimiser updates, keyed by name;
    * ``meta_gradient(batch) -> (grads, metrics)``: gradients for ``meta_parameters()`` (same keys),
      averaged over the tasks of the batch, and detached per-batch metrics;
    * ``evaluate_batch(batch, steps=None, batchnorm="transductive") -> scores [B]``: adapt (``steps`` at test
      time) and score each task's query set, its queries together or each on its own (``"inductive"``,
      :mod:`metalib.inner.inductive`);
    * ``query_outputs(batch, steps=None, batchnorm="transductive") -> [B, Q, ...]``: the outputs those scores come
      from (class logits; a regression's predictions), without using the query labels: what
      :func:`metalib.predict.predict` turns into labels and probabilities;
    * ``default_optimizer(name=None, lr=None)`` and ``test_steps``: the learner's own defaults;
    * ``set_training_step(step, total)``: the outer step about to run (a no-op unless training is scheduled);
    * ``zoo_state()``: what the model zoo ships of it (its ``state_dict`` by default);
    * ``finish_training(sampler)``: called once training has ended, before the final checkpoint (a no-op unless the
      learner derives state from its training data: the transfer baselines' feature mean).
    """

    problem: Problem = CLASSIFICATION
    name: str = "learner"
    test_steps: int | None = None  # adaptation steps used at test time when none are given
    # whether evaluation reads state that finish_training derives from the training data (SimpleShot's mean
    # feature): a snapshot, taken before training ended, needs finish_training before it is evaluated
    tests_with_training_statistics: bool = False

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.named_parameters())

    def meta_gradient(self, batch: TaskBatch) -> tuple[Params, dict[str, float]]:
        raise NotImplementedError

    def evaluate_batch(self, batch: TaskBatch, steps: int | None = None, batchnorm: str = "transductive") -> Tensor:
        raise NotImplementedError

    def query_outputs(self, batch: TaskBatch, steps: int | None = None, batchnorm: str = "transductive") -> Tensor:
        raise NotImplementedError

    def inductive_scores(self, model: nn.Module, adapted: dict[str, Tensor], batch: TaskBatch) -> Tensor:
        """Query scores ``[B]`` of ``model`` with ``adapted`` parameters, each query seen with the support set only."""
        with torch.no_grad():
            out = forward_inductive(model, adapted, batch.support_x, batch.query_x)
        return self.problem.task_score(out, batch.query_y)

    def check_tasks(self, sampler) -> None:
        """Called by :func:`~metalib.train.meta_train` and :func:`~metalib.evaluate.evaluate` before the first task
        is drawn: a learner whose model cannot take the sampler's tasks says so in one line here (e.g. a 3-output
        model on 5-way tasks) instead of failing inside the first step. Nothing to check by default."""

    def set_training_step(self, step: int, total: int) -> None:
        """Called by :func:`~metalib.train.meta_train` before outer step ``step`` of ``total``: learners whose
        training changes over the run (MAML++'s annealing) follow it; a function of the step, so resuming is exact."""

    def zoo_state(self) -> dict[str, Tensor]:
        """What a shipped model file holds: the ``state_dict`` less what only training needs (the transfer
        baselines' pre-training head); ``load_state_dict`` accepts it."""
        return self.state_dict()

    def finish_training(self, sampler) -> None:
        """Called by :func:`~metalib.train.meta_train` when training has ended (also when a finished run is resumed),
        before the final checkpoint, with the training sampler: state computed from the training data with the
        final weights goes here. Must give the same result every time (every process of a sharded run calls it)."""

    def default_optimizer(self, name: str | None = None, lr: float | None = None) -> torch.optim.Optimizer:
        """Adam (default lr 1e-3) or SGD (default lr 1.0), Adam unless the learner says otherwise (Reptile: SGD
        with its step size epsilon)."""
        name = name or "adam"
        return make_torch_optimizer(list(self.meta_parameters().values()), name, lr,
                                    default_lr=1.0 if name == "sgd" else 1e-3)

    def describe(self) -> dict[str, object]:
        """Settings that belong next to any reported result."""
        return {"algorithm": self.name, "batchnorm": TRAINING_BATCHNORM}

    def _grads(self, loss: Tensor) -> Params:
        params = self.meta_parameters()
        gs = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        return {k: (torch.zeros_like(p) if g is None else g) for (k, p), g in zip(params.items(), gs)}


def adapted_outputs(model: nn.Module, adapted: dict[str, Tensor], batch: TaskBatch, batchnorm: str) -> Tensor:
    """Query outputs ``[B, Q, ...]`` of ``model`` with each task's ``adapted`` parameters: the queries through the
    network together (``"transductive"``) or each with the support set alone (``"inductive"``)."""
    with torch.no_grad():
        if check_batchnorm(batchnorm) == "inductive":
            return forward_inductive(model, adapted, batch.support_x, batch.query_x)
        return forward_adapted(model, adapted, batch.query_x)


def embed_episode(model: nn.Module, batch: TaskBatch, params: Params | None = None) -> tuple[Tensor, Tensor, int]:
    """Support and query embeddings ``[B, N*K, D]``, ``[B, N*Q, D]`` and the number of ways. Both sets go through
    ``model`` (with ``params``, default its own) in one batch per task, so BatchNorm statistics are per task
    (transductive), as in the MAML family."""
    x = torch.cat([batch.support_x, batch.query_x], dim=1)
    params = dict(model.named_parameters()) if params is None else params
    if x.device.type == "cpu" and len(x) > 1 and not torch.is_grad_enabled():
        # at test time on a CPU, each task's plain convolutions are faster than one grouped pass over the tasks
        # (BENCHMARKS.md); training passes a task at a time anyway or runs its tasks on worker threads
        z = torch.cat([forward_adapted(model, params, x[i:i + 1]) for i in range(len(x))])
    else:
        z = forward_adapted(model, params, x)
    n_support = batch.support_x.shape[1]
    return z[:, :n_support], z[:, n_support:], int(batch.support_y.max()) + 1


class EpisodeClassifier(MetaLearner):
    """A learner whose adaptation is one differentiable function of the support set (no inner loop):
    ``logits(batch) -> [B, N*Q, N]``; training and evaluation follow from it.

    A learner that also writes its logits as a pure function of its meta-parameters, ``logits_with(params, batch)``
    (ProtoNets, R2D2), is trained as the inner-loop learners are on a CPU: the meta-batch's tasks over worker
    threads, each task's gradient taken as soon as its loss is known (:class:`~metalib.inner.per_task.
    PerTaskGradients`), instead of one pass of grouped convolutions over the whole meta-batch, which was measured
    slower there (BENCHMARKS.md)."""

    problem = CLASSIFICATION

    def logits(self, batch: TaskBatch) -> Tensor:
        raise NotImplementedError

    def logits_with(self, params: Params, batch: TaskBatch) -> Tensor:
        """``logits(batch)`` with the meta-parameters ``params`` (keyed as :meth:`meta_parameters`), touching no
        module state, so that tasks can run on worker threads; learners that cannot leave it unimplemented."""
        raise NotImplementedError

    def episode_loss(self, logits: Tensor, query_y: Tensor) -> Tensor:
        """Each task's training loss ``[B]`` from its query logits: the problem's (cross-entropy) unless the learner
        trains on another (Relation Networks: squared error on the scores)."""
        return self.problem.task_loss(logits, query_y)

    def _threaded(self, batch: TaskBatch) -> bool:
        model = getattr(self, "model", None)
        return (type(self).logits_with is not EpisodeClassifier.logits_with and batch.device.type == "cpu"
                and len(batch) > 1 and torch.get_num_threads() > 1 and isinstance(model, TaskBatchedModel))

    def task_losses(self, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Query loss and score of every task, ``[B]`` each (the loss differentiable in the meta-parameters)."""
        if not (torch.is_grad_enabled() and self._threaded(batch)):
            logits = self.logits(batch)
            return self.episode_loss(logits, batch.query_y), self.problem.task_score(logits.detach(), batch.query_y)
        keys, inputs = zip(*self.meta_parameters().items())

        def run(leaves: list[Tensor], i: int) -> tuple[Tensor, Tensor]:
            task = batch[i:i + 1]
            logits = self.logits_with(dict(zip(keys, leaves)), task)
            return self.episode_loss(logits, task.query_y)[0], self.problem.task_score(logits.detach(), task.query_y)[0]
        return PerTaskGradients.apply(run, chunks(len(batch), parallel=True), *inputs)

    def meta_gradient(self, batch: TaskBatch) -> tuple[Params, dict[str, float]]:
        losses, scores = self.task_losses(batch)
        loss = losses.mean()
        return self._grads(loss), {"loss": loss.item(), self.problem.score_name: scores.mean().item()}

    def query_outputs(self, batch: TaskBatch, steps: int | None = None, batchnorm: str = "transductive") -> Tensor:
        with torch.no_grad():
            inductive = check_batchnorm(batchnorm) == "inductive"
            return per_query(self.logits, batch) if inductive else self.logits(batch)

    def evaluate_batch(self, batch: TaskBatch, steps: int | None = None, batchnorm: str = "transductive") -> Tensor:
        return self.problem.task_score(self.query_outputs(batch, steps, batchnorm), batch.query_y)


def make_torch_optimizer(params: list[nn.Parameter], name: str, lr: float | None,
                         default_lr: float) -> torch.optim.Optimizer:
    """``adam`` or ``sgd`` over ``params`` at ``lr`` (``default_lr`` when None)."""
    lr = default_lr if lr is None else lr
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ArgumentError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def check_head(model: nn.Module, problem, ways: int | None, who: str) -> None:
    """A classifier's linear head (``head.weight``) needs one output per class: at least 2, and ``ways`` when the
    tasks are known. Raises a one-line :class:`~metalib.errors.ArgumentError` naming the fix."""
    head = dict(model.named_parameters()).get("head.weight")
    if head is None or problem.name != "classification":
        return
    n = head.shape[0]
    if n < 2:
        raise ArgumentError(f"{who} classifies, but its model has {n} output (a regression model such as mlp()): give "
                            f"it one output per class, e.g. conv4({ways or 5}), or pass problem='regression'")
    if ways is not None and ways > n:
        raise ArgumentError(f"{who}'s model has {n} outputs but the tasks are {ways}-way: build the model with one "
                            f"output per class, e.g. conv4({ways})")

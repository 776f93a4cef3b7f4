"""Transfer baselines: pre-train an embedding on every training class at once, then solve each task on frozen (or
fine-tuned) features. No meta-learning: the question of notebook 10 is how far this gets.

Training is ordinary supervised learning, a classifier over all training classes on minibatches
(:class:`~metalib.tasks.ClassBatches`; on episodes it uses their images with their classes' global labels). The
pre-training head is linear, or cosine (``s * cos(z, w_c)``, Baseline++). At test time each learner solves the task
its own way:

==============  ==================================================================================================
``baseline``    Chen et al. 2019: a new linear head trained on the support features (SGD, momentum 0.9, weight
                decay 1e-3), the body frozen
``baseline_pp`` the same with a cosine head, pre-trained with one too (Baseline++)
``simpleshot``  Wang et al. 2019: nearest centroid on features centred by the training classes' mean and
                L2-normalised (CL2N)
``linear_probe`` Tian et al. 2020: multinomial logistic regression (L2 penalty, L-BFGS to convergence) on
                L2-normalised features
``finetune``    Dhillon et al. 2020: the whole network fine-tuned on the support set by the inner loop's SGD
                (:func:`~metalib.inner.inner_sgd`), from a cosine head set to the support's class means
==============  ==================================================================================================

The centring mean of SimpleShot is the embedding's mean over one pass of the training images with the final
weights, computed when training ends (:meth:`TransferLearner.finish_training`) and kept in the state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ArgumentError
from ..inner import check_batchnorm, forward_adapted, forward_inductive, inner_sgd
from ..params import Params
from ..problems import CLASSIFICATION
from ..tasks import ClassBatches, TaskBatch
from ..utils import seeded
from .base import MetaLearner, embed_episode
from .registry import LearnerSpec, NoSettings, Settings, register, setting

__all__ = ["TransferLearner", "transfer_learner", "fit_head", "logistic_regression", "class_means", "centroid_logits",
           "METHODS",
           "HeadSettings", "CosineHeadSettings", "LinearProbeSettings", "FinetuneSettings"]

#: test-time method of each transfer learner, and whether its pre-training head is a cosine one
METHODS = {"baseline": ("linear_head", False), "baseline_pp": ("cosine_head", True), "simpleshot": ("centroid", False),
           "linear_probe": ("logistic", False), "finetune": ("finetune", False)}


def class_means(z: Tensor, y: Tensor, ways: int) -> Tensor:
    """Each class's mean ``[B, N, D]`` of features ``z`` ``[B, n, D]`` with labels ``y`` ``[B, n]``."""
    onehot = F.one_hot(y, ways).to(z.dtype)
    return onehot.transpose(1, 2) @ z / onehot.sum(1).unsqueeze(-1)


def centroid_logits(zs: Tensor, ys: Tensor, zq: Tensor, ways: int, mean: Tensor) -> Tensor:
    """SimpleShot's classifier: negative squared distances ``[B, q, N]`` from each query to the class centroids, after
    centring every feature by ``mean`` and L2-normalising it (CL2N)."""
    zs, zq = F.normalize(zs - mean, dim=-1), F.normalize(zq - mean, dim=-1)
    return -torch.cdist(zq, class_means(zs, ys, ways)).pow(2)


def _head_logits(z: Tensor, w: Tensor, b: Tensor | None, scale: float | None) -> Tensor:
    """Linear (``scale`` None: ``z W^T + b``) or cosine (``scale * cos(z, w_c)``) logits ``[B, n, N]``."""
    if scale is not None:
        return scale * F.normalize(z, dim=-1) @ F.normalize(w, dim=-1).transpose(1, 2)
    return torch.baddbmm(b.unsqueeze(1), z, w.transpose(1, 2))


def fit_head(zs: Tensor, ys: Tensor, ways: int, *, steps: int, lr: float, scale: float | None = None,
             weight_decay: float = 1e-3) -> tuple[Tensor, Tensor | None]:
    """A new head per task on frozen support features ``zs`` ``[B, n, D]`` (Chen et al.'s fine-tuning stage): full-
    batch SGD with momentum 0.9 and ``weight_decay`` on each task's mean cross-entropy. Linear (from zero) or, with
    ``scale``, cosine (from the class means, no bias). The tasks' problems are separate, so one optimiser over the
    stacked heads takes each task's own steps. Returns ``(weight [B, N, D], bias [B, N] or None)``."""
    with torch.enable_grad():
        zs = zs.detach()
        if scale is None:
            w, b = zs.new_zeros(zs.shape[0], ways, zs.shape[2]), zs.new_zeros(zs.shape[0], ways)
        else:
            w, b = class_means(zs, ys, ways), None
        leaves = [t.requires_grad_() for t in (w, b) if t is not None]
        opt = torch.optim.SGD(leaves, lr=lr, momentum=0.9, weight_decay=weight_decay)
        for _ in range(steps):
            loss = F.cross_entropy(_head_logits(zs, w, b, scale).flatten(0, 1), ys.flatten(), reduction="sum")
            opt.zero_grad()
            (loss / zs.shape[1]).backward()  # the sum over tasks of each task's mean
            opt.step()
    return w.detach(), None if b is None else b.detach()


def logistic_regression(zs: Tensor, ys: Tensor, ways: int, *, l2: float = 1.0, max_iter: int = 100
                        ) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression per task, as scikit-learn's ``LogisticRegression(C=1/l2)`` solves it:
    minimise ``sum_i CE_i + l2 / 2 * |W|^2`` (the bias not penalised) by L-BFGS with a strong-Wolfe line search, in
    float64, for at most ``max_iter`` iterations. Each task is solved on its own (a joint solve's line search would
    make an unconverged task's answer depend on the other tasks of its batch). Returns ``(weight [B, N, D],
    bias [B, N])`` in ``zs``'s dtype."""
    heads = [_logistic_one(z, y, ways, l2, max_iter) for z, y in zip(zs.detach().double(), ys)]
    return torch.stack([w for w, _ in heads]).to(zs.dtype), torch.stack([b for _, b in heads]).to(zs.dtype)


def _logistic_one(z: Tensor, y: Tensor, ways: int, l2: float, max_iter: int) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        w = z.new_zeros(ways, z.shape[1], requires_grad=True)
        b = z.new_zeros(ways, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                                history_size=20, line_search_fn="strong_wolfe")

        def objective() -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(torch.addmm(b, z, w.T), y, reduction="sum") + l2 / 2 * w.pow(2).sum()
            loss.backward()
            return loss
        opt.step(objective)
    return w.detach(), b.detach()


class TransferLearner(MetaLearner):
    """An embedding pre-trained with a ``classes``-way head (linear, or cosine with ``scale``), solving each task by
    ``method`` (:data:`METHODS`): ``head_steps`` and ``head_lr`` are the test-time optimisation's steps and step size
    (L-BFGS iterations for the logistic regression), ``l2`` its penalty."""

    problem = CLASSIFICATION

    def __init__(self, model: nn.Module, *, name: str, classes: int, head_steps: int = 100, head_lr: float = 0.01,
                 scale: float = 10.0, l2: float = 1.0, seed: int | None = None):
        super().__init__()
        if name not in METHODS:
            raise ArgumentError(f"unknown transfer learner {name!r}; choose one of {sorted(METHODS)}")
        if classes < 2:
            raise ArgumentError(f"{name} pre-trains a classifier over the training classes: it needs at least 2, "
                                f"got {classes}")
        self.name, (self.method, self.cosine) = name, METHODS[name]
        self.model, self.classes = model, classes
        self.head_steps, self.head_lr, self.scale, self.l2 = head_steps, head_lr, scale, l2
        self.test_steps = None if self.method == "centroid" else head_steps
        self.tests_with_training_statistics = self.method == "centroid"
        with seeded(seed):
            self.classifier = nn.Linear(model.embedding_dim, classes, bias=not self.cosine)
        self.register_buffer("feature_mean", torch.zeros(model.embedding_dim))

    # ---- pre-training
    def pretraining_logits(self, params: Params, batch: TaskBatch) -> tuple[Tensor, Tensor]:
        """Logits ``[B, n, classes]`` of every image of the batch (support and query) and their global labels."""
        model = {k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")}
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        labels = batch.info["class_ids"].gather(1, torch.cat([batch.support_y, batch.query_y], dim=1))
        if int(labels.max()) >= self.classes:
            raise ArgumentError(f"{self.name}'s pre-training head has {self.classes} classes but the training tasks "
                                f"have class {int(labels.max())}: build it with ways = the training split's classes")
        z = forward_adapted(self.model, model, x)  # BatchNorm over each minibatch (task)
        w = params["classifier.weight"]
        w = w.expand(z.shape[0], *w.shape)
        b = None if self.cosine else params["classifier.bias"].expand(z.shape[0], -1)
        return _head_logits(z, w, b, self.scale if self.cosine else None), labels

    def meta_gradient(self, batch: TaskBatch) -> tuple[Params, dict[str, float]]:
        logits, labels = self.pretraining_logits(self.meta_parameters(), batch)
        losses = self.problem.task_loss(logits, labels)
        loss = losses.mean()
        return self._grads(loss), {"loss": loss.item(),
                                   "accuracy": self.problem.task_score(logits.detach(), labels).mean().item()}

    @torch.no_grad()
    def finish_training(self, sampler) -> None:
        """SimpleShot's centre: the mean feature of the training images with the final weights (one pass over a
        :class:`~metalib.tasks.ClassBatches` epoch in its minibatches; for episodes, the images of their first 100
        tasks)."""
        total, count = torch.zeros_like(self.feature_mean, dtype=torch.float64), 0
        for x in _training_images(sampler):
            z = forward_adapted(self.model, dict(self.model.named_parameters()), x)
            total += z.double().sum((0, 1))
            count += z.shape[0] * z.shape[1]
        self.feature_mean.copy_((total / count).to(self.feature_mean.dtype))

    def zoo_state(self) -> dict[str, Tensor]:
        """The state without the pre-training head: no test-time method uses it (a quarter of the file at 4800
        classes)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("classifier.")}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As ``nn.Module``'s; a state without the pre-training head (:meth:`zoo_state`) keeps the head as it is."""
        own = {k: v for k, v in self.state_dict().items() if k.startswith("classifier.")}
        if not any(k.startswith("classifier.") for k in state_dict):
            state_dict = {**state_dict, **own}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ---- test time
    def features(self, batch: TaskBatch, batchnorm: str = "transductive") -> tuple[Tensor, Tensor, int]:
        """Frozen support and query features ``[B, n, D]`` and the ways: the task's images through the embedding
        together (``"transductive"``), or the support set alone and each query with it (``"inductive"``)."""
        params = dict(self.model.named_parameters())
        if check_batchnorm(batchnorm) == "transductive":
            return embed_episode(self.model, batch, params)
        zs = forward_adapted(self.model, params, batch.support_x)
        return zs, forward_inductive(self.model, params, batch.support_x, batch.query_x), int(batch.support_y.max()) + 1

    def query_outputs(self, batch: TaskBatch, steps: int | None = None, batchnorm: str = "transductive") -> Tensor:
        steps = self.head_steps if steps is None else steps
        with torch.no_grad():
            if self.method == "finetune":
                return self._finetuned_logits(batch, steps, batchnorm)
            zs, zq, ways = self.features(batch, batchnorm)
            ys = batch.support_y
            if self.method == "centroid":
                return centroid_logits(zs, ys, zq, ways, self.feature_mean)
            if self.method == "logistic":
                zs, zq = F.normalize(zs, dim=-1), F.normalize(zq, dim=-1)
                w, b = logistic_regression(zs, ys, ways, l2=self.l2, max_iter=steps)
                return _head_logits(zq, w, b, None)
            scale = self.scale if self.method == "cosine_head" else None
            w, b = fit_head(zs, ys, ways, steps=steps, lr=self.head_lr, scale=scale)
            return _head_logits(zq, w, b, scale)

    def _finetuned_logits(self, batch: TaskBatch, steps: int, batchnorm: str) -> Tensor:
        """Each task on its own (plain convolutions, which a CPU runs faster than grouped ones over the tasks): every
        weight of a copy of the network, and a cosine head started at the support's normalised class means, take
        ``steps`` SGD steps on the support loss (first order: nothing is meta-learned here)."""
        return torch.cat([self._finetune_one(batch[t], steps, batchnorm) for t in range(len(batch))])

    def _finetune_one(self, task: TaskBatch, steps: int, batchnorm: str) -> Tensor:
        sx, ys = task.support_x, task.support_y
        ways = int(ys.max()) + 1
        body = {k: v.detach() for k, v in self.model.named_parameters()}
        zs = F.normalize(forward_adapted(self.model, body, sx), dim=-1)
        start = {**{k: v.clone() for k, v in body.items()}, "head.weight": F.normalize(class_means(zs, ys, ways), dim=-1)}

        def logits(p: Params, x: Tensor) -> Tensor:
            z = forward_adapted(self.model, {k: v for k, v in p.items() if k != "head.weight"}, x)
            return _head_logits(z, p["head.weight"], None, self.scale)

        def support_loss(p: Params, step: int) -> Tensor:
            return F.cross_entropy(logits(p, sx)[0], ys[0])
        with torch.enable_grad():
            fast = inner_sgd(support_loss, {k: v.requires_grad_() for k, v in start.items()}, self.head_lr, steps,
                             first_order=True)
        fast = {k: v.detach() for k, v in fast.items()}
        if check_batchnorm(batchnorm) == "transductive":
            return logits(fast, task.query_x)
        z = forward_inductive(self.model, {k: v for k, v in fast.items() if k != "head.weight"}, sx, task.query_x)
        return _head_logits(z, fast["head.weight"], None, self.scale)

    def evaluate_batch(self, batch: TaskBatch, steps: int | None = None, batchnorm: str = "transductive") -> Tensor:
        return self.problem.task_score(self.query_outputs(batch, steps, batchnorm), batch.query_y)

    def describe(self) -> dict[str, object]:
        out = {**super().describe(), "pretraining_head": "cosine" if self.cosine else "linear", "classes": self.classes}
        if self.method in ("linear_head", "cosine_head", "finetune"):
            out.update(head_steps=self.head_steps, head_lr=self.head_lr)
        if self.cosine or self.method == "finetune":
            out["scale"] = self.scale
        if self.method == "logistic":
            out.update(head_steps=self.head_steps, l2=self.l2)
        return out


def _training_images(sampler, limit: int = 100):
    """Batches ``[1, n, ...]`` of training images for :meth:`TransferLearner.finish_training`."""
    if isinstance(sampler, ClassBatches):
        yield from sampler.epoch_batches()
        return
    for i in range(limit):
        task = sampler.task(i)
        yield torch.cat([task.support_x, task.query_x], dim=1)


def transfer_learner(name: str, model: nn.Module, *, classes: int, head_steps: int = 100, head_lr: float = 0.01,
                     scale: float = 10.0, l2: float = 1.0, seed: int | None = None) -> TransferLearner:
    """Transfer learner ``name`` (:data:`METHODS`) on an embedding model (e.g. ``conv4(0)``) pre-trained with a
    ``classes``-way head; ``seed`` fixes the head's initialisation."""
    return TransferLearner(model, name=name, classes=classes, head_steps=head_steps, head_lr=head_lr, scale=scale,
                           l2=l2, seed=seed)


_HEAD_STEPS = "baseline/baseline_pp/finetune: test-time steps on the support set (linear_probe: L-BFGS iterations)"


@dataclass(frozen=True, kw_only=True)
class HeadSettings(Settings):
    head_steps: int = setting(100, _HEAD_STEPS, low=1)
    head_lr: float = setting(0.01, "baseline/baseline_pp/finetune: their step size", low=0, strict=True)


@dataclass(frozen=True, kw_only=True)
class CosineHeadSettings(HeadSettings):
    cosine_scale: float = setting(10.0, "baseline_pp/finetune: the cosine head's logit scale", low=0, strict=True)


@dataclass(frozen=True, kw_only=True)
class LinearProbeSettings(Settings):
    head_steps: int = setting(100, _HEAD_STEPS, low=1)
    l2_penalty: float = setting(1.0, "linear_probe: the logistic regression's L2 penalty (scikit-learn's 1/C)",
                                low=0, strict=True)


@dataclass(frozen=True, kw_only=True)
class FinetuneSettings(CosineHeadSettings):
    head_steps: int = setting(25, _HEAD_STEPS, low=1)


_SUMMARIES = {
    "baseline": "Baseline (Chen et al.): pre-trained embedding, a new linear head trained on each support set",
    "baseline_pp": "Baseline++ (Chen et al.): cosine-classifier pre-training, a new cosine head per support set",
    "simpleshot": "SimpleShot: nearest centroid on centred, L2-normalised pre-trained features",
    "linear_probe": "linear probe (Tian et al.): logistic regression on L2-normalised pre-trained features",
    "finetune": "fine-tuning (Dhillon et al.): the whole pre-trained network fine-tuned on each support set",
}
_SETTINGS = {"baseline": HeadSettings, "baseline_pp": CosineHeadSettings, "simpleshot": NoSettings,
             "linear_probe": LinearProbeSettings, "finetune": FinetuneSettings}


def _build(name: str):
    def build(model: nn.Module, s: Settings, ctx) -> TransferLearner:
        values = s.as_dict()
        return transfer_learner(name, model, classes=ctx.ways or 0, head_steps=values.get("head_steps", 100),
                                head_lr=values.get("head_lr", 0.01), scale=values.get("cosine_scale", 10.0),
                                l2=values.get("l2_penalty", 1.0), seed=ctx.seed)
    return build


for _name in METHODS:
    register(LearnerSpec(_name, _SETTINGS[_name], _build(_name), _SUMMARIES[_name], model="embedding",
                         problems=("classification",), problem_note="pre-trains a classifier over the training classes",
                         inner_loop=False, training="batches"))

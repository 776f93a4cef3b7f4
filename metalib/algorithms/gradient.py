"""MAML, FOMAML, Meta-SGD, ANIL and the joint pre-training baseline: configurations of the inner loop.

==========  =========================================================================
MAML        second-order meta-gradient through ``steps`` inner SGD steps
FOMAML      the same with inner gradients treated as constants (``first_order=True``)
Meta-SGD    MAML plus a learned inner learning rate per parameter entry
ANIL        MAML that adapts only the head; the body is shared and fixed per task
Proto-MAML  MAML whose head starts from the task's class prototypes
zero head   ``zero_head=True`` (MAML, FOMAML, Meta-SGD, ANIL): every task's head starts at zero
pretrain    0 inner steps in training (joint training), fine-tuned at test time
==========  =========================================================================
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..errors import ArgumentError
from ..inner import InnerConfig, adapt, check_batchnorm, task_losses
from ..models import split_body_head
from ..problems import Problem, get_problem
from ..tasks import TaskBatch
from ..params import Params
from .base import MetaLearner, adapted_outputs, check_head
from .registry import LearnerSpec, Settings, register, setting

__all__ = ["GradientMetaLearner", "maml", "fomaml", "metasgd", "anil", "protomaml", "pretrain", "InnerLoopSettings",
           "MAMLSettings", "PretrainSettings"]

_LR_PREFIX = "inner_lr."


class GradientMetaLearner(MetaLearner):
    """One class, several configurations of :class:`~metalib.inner.InnerConfig`.

    ``learn_lr=True`` (Meta-SGD) adds a learned inner learning rate per entry of every adapted
    parameter; with ``inner.lr_per_step`` (MAML++) one learned rate per adapted parameter tensor and inner
    step instead. Both start at ``inner.lr``. Meta-parameters are keyed by the model's own parameter
    names, and ``inner_lr.<name>`` for learned learning rates.
    """

    def __init__(self, model: nn.Module, inner: InnerConfig, *, learn_lr: bool = False, name: str = "maml"):
        super().__init__()
        self.model = model
        self.inner = inner
        self.problem = inner.problem
        self.name = name
        check_head(model, self.problem, None, name)
        names = inner.adapt_only if inner.adapt_only is not None else [k for k, _ in model.named_parameters()]
        if inner.lr_per_step and not learn_lr:
            raise ArgumentError("lr_per_step needs learned learning rates (learn_lr=True)")
        self.inner_lrs = nn.ParameterDict()  # state_dict names: inner_lrs.<name with '.' -> '__'>
        if learn_lr:
            for k, p in model.named_parameters():
                if k in names:
                    init = torch.full((max(inner.steps, 1),), inner.lr, dtype=p.dtype, device=p.device) \
                        if inner.lr_per_step else torch.full_like(p.detach(), inner.lr)
                    self.inner_lrs[k.replace(".", "__")] = nn.Parameter(init)

    @property
    def test_steps(self) -> int:
        return self.inner.steps

    def check_tasks(self, sampler) -> None:
        check_head(self.model, self.problem, getattr(sampler, "ways", None), self.name)

    def params(self) -> Params:
        return dict(self.model.named_parameters())

    def lrs(self) -> Params | None:
        if len(self.inner_lrs) == 0:
            return None
        return {k.replace("__", "."): v for k, v in self.inner_lrs.items()}

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        return {**self.params(), **{_LR_PREFIX + k: v for k, v in (self.lrs() or {}).items()}}

    def query_losses(self, batch: TaskBatch, cfg: InnerConfig | None = None) -> tuple[Tensor, Tensor]:
        """Per-task query losses and scores after adaptation, differentiable w.r.t. meta-parameters."""
        return task_losses(self.model, self.params(), batch, cfg or self.inner, self.lrs())

    def meta_gradient(self, batch: TaskBatch) -> tuple[Params, dict[str, float]]:
        losses, scores = self.query_losses(batch)
        loss = losses.mean()
        return self._grads(loss), {"loss": loss.item(), self.problem.score_name: scores.mean().item()}

    def _frozen(self, steps: int | None) -> tuple[InnerConfig, Params, Params | None]:
        """Test-time settings: first-order, ``steps`` steps, no multi-step loss, detached meta-parameters."""
        cfg = replace(self.inner, first_order=True, steps=self.inner.steps if steps is None else steps,
                      step_weights=None)
        lrs = self.lrs()
        return cfg, {k: v.detach() for k, v in self.params().items()}, \
            None if lrs is None else {k: v.detach() for k, v in lrs.items()}

    def evaluate_batch(self, batch: TaskBatch, steps: int | None = None, batchnorm: str = "transductive") -> Tensor:
        cfg, params, lrs = self._frozen(steps)
        if check_batchnorm(batchnorm) == "inductive":
            return self.inductive_scores(self.model, adapt(self.model, params, batch, cfg, lrs), batch)
        return task_losses(self.model, params, batch, cfg, lrs)[1]

    def query_outputs(self, batch: TaskBatch, steps: int | None = None, batchnorm: str = "transductive") -> Tensor:
        cfg, params, lrs = self._frozen(steps)
        return adapted_outputs(self.model, adapt(self.model, params, batch, cfg, lrs), batch, batchnorm)

    def adapted_params(self, batch: TaskBatch, steps: int | None = None) -> Params:
        """Adapted parameters of every task (``[B, ...]`` each), detached: for plots and inspection."""
        cfg, params, lrs = self._frozen(steps)
        return {k: v.detach() for k, v in adapt(self.model, params, batch, cfg, lrs).items()}

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "inner_steps": self.inner.steps, "inner_lr": self.inner.lr,
                "first_order": self.inner.first_order, "learned_lr": len(self.inner_lrs) > 0,
                "adapted": self._adapted()}

    def _adapted(self) -> str:
        """Which weights the inner loop adapts: "all", "head" (ANIL), or "all" beside per-step ones (MAML++'s
        BatchNorm weights, chosen by the inner step rather than adapted)."""
        only, per_step = self.inner.adapt_only, set(self.inner.per_step)
        own = [k for k, _ in self.model.named_parameters() if k not in per_step]
        if only is None or set(own) <= set(only):
            return "all but the per-step BatchNorm" if per_step else "all"
        return "head" if all(k.startswith("head.") for k in only) else ", ".join(only)


def _linear_head(model: nn.Module, who: str) -> None:
    _, head = split_body_head(dict(model.named_parameters()))
    if sorted(head) != ["head.bias", "head.weight"]:
        raise ArgumentError(f"{who} needs a model with a linear head 'head.weight', 'head.bias' (e.g. conv4(5))")


def _zero_head(model: nn.Module, zero_head: bool) -> str | None:
    """``head_init`` for the zeroing trick (Kao et al., 2022): each task's linear head starts at zero, so that all
    classes start equal and the meta-gradient carries no noise from the order of the learned head's rows (the
    head itself then gets no meta-gradient)."""
    if zero_head:
        _linear_head(model, "zero_head")
    return "zeros" if zero_head else None


def maml(model: nn.Module, *, inner_lr: float = 0.4, steps: int = 1, first_order: bool = False,
         problem: str | Problem = "classification", strategy: str = "auto",
         zero_head: bool = False) -> GradientMetaLearner:
    """MAML (Finn et al., 2017): second-order meta-gradient through ``steps`` inner SGD steps; ``zero_head``: each
    task's head starts at zero (Kao et al.'s zeroing trick)."""
    cfg = InnerConfig(steps=steps, lr=inner_lr, first_order=first_order, strategy=strategy, problem=get_problem(problem),
                      head_init=_zero_head(model, zero_head))
    return GradientMetaLearner(model, cfg, name="fomaml" if first_order else "maml")


def fomaml(model: nn.Module, **kw) -> GradientMetaLearner:
    """First-order MAML: the query gradient at the adapted weights is the meta-gradient."""
    return maml(model, first_order=True, **kw)


def metasgd(model: nn.Module, *, inner_lr: float = 0.4, steps: int = 1, first_order: bool = False,
            problem: str | Problem = "classification", strategy: str = "auto",
            zero_head: bool = False) -> GradientMetaLearner:
    """Meta-SGD (Li et al., 2017): inner learning rates per parameter entry, meta-learned with the init."""
    cfg = InnerConfig(steps=steps, lr=inner_lr, first_order=first_order, strategy=strategy, problem=get_problem(problem),
                      head_init=_zero_head(model, zero_head))
    return GradientMetaLearner(model, cfg, learn_lr=True, name="metasgd")


def anil(model: nn.Module, *, inner_lr: float = 0.4, steps: int = 1, first_order: bool = False,
         problem: str | Problem = "classification", strategy: str = "auto",
         zero_head: bool = False) -> GradientMetaLearner:
    """ANIL (Raghu et al., 2020): only the head adapts in the inner loop."""
    _, head = split_body_head(dict(model.named_parameters()))
    if not head:
        raise ArgumentError("ANIL needs a model with 'head.*' parameters (see metalib.models)")
    cfg = InnerConfig(steps=steps, lr=inner_lr, first_order=first_order, adapt_only=tuple(head), strategy=strategy,
                      problem=get_problem(problem),
                      head_init=_zero_head(model, zero_head))
    return GradientMetaLearner(model, cfg, name="anil")


def protomaml(model: nn.Module, *, inner_lr: float = 0.4, steps: int = 1, first_order: bool = False,
              problem: str | Problem = "classification", strategy: str = "auto") -> GradientMetaLearner:
    """Proto-MAML (Triantafillou et al., 2020): MAML whose linear head starts, for each task, as the ProtoNet of
    its support set (``W_c = 2 c_c``, ``b_c = -|c_c|^2``), then adapts with the body. The model's own head
    parameters only give the head's shape (their meta-gradient is zero); the prototypes carry the meta-gradient
    into the body even when ``first_order``."""
    _linear_head(model, "Proto-MAML")
    cfg = InnerConfig(steps=steps, lr=inner_lr, first_order=first_order, strategy=strategy, problem=get_problem(problem),
                      head_init="prototypes")
    return GradientMetaLearner(model, cfg, name="protomaml")


def pretrain(model: nn.Module, *, inner_lr: float = 0.01, problem: str | Problem = "classification",
             strategy: str = "auto") -> GradientMetaLearner:
    """Joint pre-training baseline: minimise the loss over all tasks' data at the shared weights
    (the inner loop has 0 steps in training), then fine-tune at test time with ``inner_lr``
    via ``evaluate(..., steps=k)``."""
    cfg = InnerConfig(steps=0, lr=inner_lr, strategy=strategy, problem=get_problem(problem))
    return GradientMetaLearner(model, cfg, name="pretrain")


INNER_LR_HELP = "inner-loop step size"
INNER_STEPS_HELP = "inner-loop steps in training"


@dataclass(frozen=True, kw_only=True)
class InnerLoopSettings(Settings):
    """A learner that adapts by SGD steps: the step size (0.01 on the sinusoids) and the number of steps."""

    inner_lr: float = setting(0.4, INNER_LR_HELP, low=0, strict=True, regression=0.01)
    inner_steps: int = setting(1, INNER_STEPS_HELP, low=0)


@dataclass(frozen=True, kw_only=True)
class MAMLSettings(InnerLoopSettings):
    zero_head: bool = setting(False, "every task's head starts at zero (Kao et al.'s zeroing trick)",
                              classification_only=True)


@dataclass(frozen=True, kw_only=True)
class PretrainSettings(Settings):
    """Joint training has no inner steps; ``inner_lr`` is the step size of test-time fine-tuning."""

    inner_lr: float = setting(0.01, INNER_LR_HELP + " (pretrain: of test-time fine-tuning)", low=0, strict=True)


def _maml_family(name: str, factory, summary: str) -> LearnerSpec:
    return register(LearnerSpec(
        name, MAMLSettings, lambda model, s, ctx: factory(model, inner_lr=s.inner_lr, steps=s.inner_steps,
                                                         zero_head=s.zero_head, problem=ctx.problem,
                                                         strategy=ctx.strategy), summary))


_maml_family("maml", maml, "MAML: second-order meta-gradient through the inner SGD steps")
_maml_family("fomaml", fomaml, "first-order MAML: the query gradient at the adapted weights")
_maml_family("metasgd", metasgd, "Meta-SGD: MAML with a learned inner learning rate per weight")
_maml_family("anil", anil, "ANIL: only the head adapts in the inner loop")
register(LearnerSpec(
    "protomaml", InnerLoopSettings,
    lambda model, s, ctx: protomaml(model, inner_lr=s.inner_lr, steps=s.inner_steps, problem=ctx.problem,
                                    strategy=ctx.strategy),
    "Proto-MAML: MAML whose head starts at the task's class prototypes", problems=("classification",),
    problem_note="starts each task's head at its class prototypes, so it classifies"))
register(LearnerSpec(
    "pretrain", PretrainSettings,
    lambda model, s, ctx: pretrain(model, inner_lr=s.inner_lr, problem=ctx.problem, strategy=ctx.strategy),
    "joint pre-training over all tasks' data, fine-tuned at test time (set its steps with --eval-steps)"))

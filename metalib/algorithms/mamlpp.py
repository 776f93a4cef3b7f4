"""MAML++ (Antoniou, Edwards and Storkey, 2019): MAML with the training fixes of "How to train your MAML".

Each fix is an option of the one inner loop (:class:`~metalib.inner.InnerConfig`) or a schedule over the outer
steps, not a second loop:

=============================  ==========================================================================
per-step per-layer lrs (LSLR)  ``lr_per_step``: one learned rate per adapted tensor and inner step
per-step BatchNorm (BNWB)      ``per_step``: BatchNorm weights and biases with one value per inner step
                               (``[steps, C]``), meta-learned, not adapted; the query pass after step i uses
                               step i's set, as the reference implementation indexes them
multi-step loss (MSL)          ``step_weights``: the query loss after every step, weighted; the weights move
                               to the last step over the first ``msl_steps`` outer steps (default: the
                               paper's first 10 of 150 epochs, i.e. the first 1/15 of the run)
derivative-order annealing     first-order meta-gradients for the first ``first_order_steps`` outer steps
                               (default: the paper's first 50 of 150 epochs, the first third of the run)
cosine annealing (CA)          the outer schedule: ``train_cli --lr-schedule cosine`` (the paper's: to 1e-5)
=============================  ==========================================================================

The defaults are the paper's (Antoniou et al., section 4); the reference code's Omniglot configurations differ
(e.g. multi-step loss over 20 of 250 epochs, no first-order phase). Both schedules are functions of the outer step
and the run's length alone (:meth:`MAMLPlusPlus.set_training_step`), so a resumed
run is the same run. BatchNorm statistics are those of the batch at every step (transductive, or inductive at
evaluation). The paper's per-step *running* statistics change no prediction of the reference implementation: it
tracks them per step but normalises with ``F.batch_norm(..., training=True)``, i.e. with the batch's statistics, so
metalib computes what it computes and keeps no running statistics.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, replace

from torch import Tensor, nn

from ..errors import ArgumentError
from ..inner import InnerConfig
from ..models import TaskBatchNorm
from ..problems import Problem, get_problem
from ..tasks import TaskBatch
from ..params import Params
from .gradient import GradientMetaLearner, InnerLoopSettings, INNER_LR_HELP, INNER_STEPS_HELP
from .registry import LearnerSpec, register, setting

__all__ = ["MAMLPlusPlus", "mamlpp", "msl_weights", "MSL_SHARE", "FIRST_ORDER_SHARE", "MAMLPlusPlusSettings"]


def msl_weights(steps: int, progress: float, floor: float = 0.03) -> tuple[float, ...]:
    """Multi-step loss weights of the query losses after steps ``1..steps`` at ``progress`` in [0, 1] of the
    annealing: uniform at 0; every step but the last decays linearly to ``floor / steps``; the last step takes
    the rest (so the weights sum to one). Antoniou et al. anneal over their first 10 of 150 epochs."""
    progress = min(max(progress, 0.0), 1.0)
    early = [max((1.0 - progress) / steps, floor / steps)] * (steps - 1)
    return (*early, 1.0 - sum(early))


MSL_SHARE = 10 / 150          # multi-step loss: annealed over the paper's first 10 of 150 epochs
FIRST_ORDER_SHARE = 50 / 150  # derivative-order annealing: first order for the paper's first 50 of 150 epochs


class MAMLPlusPlus(GradientMetaLearner):
    """MAML with learned per-step per-layer inner learning rates, per-step BatchNorm weights, the multi-step loss
    for the first ``msl_steps`` outer steps and first-order meta-gradients for the first ``first_order_steps``
    (``None``: the paper's share of the run, known from :meth:`set_training_step`)."""

    def __init__(self, model: nn.Module, inner: InnerConfig, *, msl_steps: int | None = None,
                 first_order_steps: int | None = None, per_step_bn: bool = True):
        if inner.steps < 1:
            raise ArgumentError(f"MAML++ needs at least one inner step, got {inner.steps}")
        checked = []
        for name, value in (("msl_steps", msl_steps), ("first_order_steps", first_order_steps)):
            try:  # NumPy and 0-d tensor integers too; a bool is a mistake
                index = None if value is None else -1 if isinstance(value, bool) else operator.index(value)
            except TypeError:
                index = -1
            if index is not None and index < 0:
                raise ArgumentError(f"{name} must be an integer >= 0 or None (the paper's share), got {value!r}")
            checked.append(index)
        msl_steps, first_order_steps = checked
        bn = [f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, TaskBatchNorm) for p in ("weight", "bias")]
        if per_step_bn and not bn:
            raise ArgumentError("per-step BatchNorm needs a model with TaskBatchNorm layers (e.g. conv4)")
        per_step = tuple(bn) if per_step_bn else ()
        names = tuple(k for k, _ in model.named_parameters() if k not in per_step)
        inner = replace(inner, lr_per_step=True, per_step=per_step, adapt_only=names if per_step else inner.adapt_only)
        super().__init__(model, inner, learn_lr=True, name="mamlpp")
        own = dict(model.named_parameters())
        self.step_params = nn.ParameterDict({  # state_dict names: step_params.<name with '.' -> '__'>
            k.replace(".", "__"): nn.Parameter(own[k].detach().expand(inner.steps, *own[k].shape).clone())
            for k in per_step})
        self.msl_steps, self.first_order_steps = msl_steps, first_order_steps
        self._step, self._total = 0, None

    def params(self) -> Params:
        own = {k: v for k, v in self.model.named_parameters() if k not in self.inner.per_step}
        return {**own, **{k.replace("__", "."): v for k, v in self.step_params.items()}}

    def set_training_step(self, step: int, total: int) -> None:
        self._step, self._total = step, total

    def schedule(self, total: int | None = None) -> tuple[int, int]:
        """``(msl_steps, first_order_steps)`` for a run of ``total`` outer steps (default: the current run's, which
        :func:`~metalib.train.meta_train` reports; unknown outside it, where the paper's shares are 0 steps)."""
        total = self._total if total is None else total
        share = lambda given, fraction: given if given is not None else round(fraction * (total or 0))  # noqa: E731
        return share(self.msl_steps, MSL_SHARE), share(self.first_order_steps, FIRST_ORDER_SHARE)

    def training_config(self, step: int) -> InnerConfig:
        """The inner loop of outer step ``step``: first-order before ``first_order_steps`` (unless the learner is
        first-order throughout), the multi-step loss before ``msl_steps``."""
        msl, first_order = self.schedule()
        weights = msl_weights(self.inner.steps, step / msl) if step < msl else None
        return replace(self.inner, first_order=self.inner.first_order or step < first_order, step_weights=weights)

    def query_losses(self, batch: TaskBatch, cfg: InnerConfig | None = None) -> tuple[Tensor, Tensor]:
        """MAML's query losses, with the inner loop of the current outer step unless ``cfg`` is given."""
        return super().query_losses(batch, cfg or self.training_config(self._step))

    def step_learning_rates(self) -> dict[str, Tensor]:
        """The learned inner learning rates, ``{parameter: [steps]}`` (detached), e.g. to plot them."""
        return {k: v.detach().clone() for k, v in (self.lrs() or {}).items()}

    def describe(self) -> dict[str, object]:
        return {**super().describe(), "per_step_bn": bool(self.inner.per_step), "msl_steps": self.msl_steps,
                "first_order_steps": self.first_order_steps}


def mamlpp(model: nn.Module, *, inner_lr: float = 0.1, steps: int = 5, msl_steps: int | None = None,
           first_order_steps: int | None = None, per_step_bn: bool = True, first_order: bool = False,
           problem: str | Problem = "classification", strategy: str = "auto") -> MAMLPlusPlus:
    """MAML++ with ``steps`` inner steps (5 in the paper) whose per-step, per-layer learning rates start at
    ``inner_lr`` (0.1 in the paper); the multi-step loss anneals over the first ``msl_steps`` outer steps and the
    meta-gradient is first-order for the first ``first_order_steps``; ``None`` (the default) takes the paper's
    share of the run: the first 1/15 and the first third of the outer steps. Train it with a cosine-annealed outer
    rate (``train_cli --lr-schedule cosine --lr-min 1e-5``), as the paper does."""
    cfg = InnerConfig(steps=steps, lr=inner_lr, first_order=first_order, strategy=strategy, problem=get_problem(problem))
    return MAMLPlusPlus(model, cfg, msl_steps=msl_steps, first_order_steps=first_order_steps, per_step_bn=per_step_bn)


@dataclass(frozen=True, kw_only=True)
class MAMLPlusPlusSettings(InnerLoopSettings):
    inner_lr: float = setting(0.1, INNER_LR_HELP + " (MAML++: where the learned per-step rates start)", low=0,
                              strict=True, regression=0.01)
    inner_steps: int = setting(5, INNER_STEPS_HELP, low=1)
    msl_steps: int | None = setting(None, "MAML++: outer steps over which the multi-step loss anneals to the last "
                                          "step's loss (default: the paper's first 1/15 of the run)", kind=int, low=0)
    first_order_steps: int | None = setting(None, "MAML++: outer steps with first-order meta-gradients before second "
                                                  "order (default: the paper's first third of the run)", kind=int, low=0)
    per_step_bn: bool = setting(True, "MAML++: BatchNorm weights and biases per inner step (off for models without "
                                      "BatchNorm, e.g. the sinusoid MLP)", regression=False)

    def length_shapes_run(self) -> bool:
        return self.msl_steps is None or self.first_order_steps is None  # the paper's shares of the run's length


register(LearnerSpec(
    "mamlpp", MAMLPlusPlusSettings,
    lambda model, s, ctx: mamlpp(model, inner_lr=s.inner_lr, steps=s.inner_steps, msl_steps=s.msl_steps,
                                 first_order_steps=s.first_order_steps, per_step_bn=s.per_step_bn,
                                 problem=ctx.problem, strategy=ctx.strategy),
    "MAML++: per-step rates and BatchNorm, multi-step loss, derivative-order annealing"))

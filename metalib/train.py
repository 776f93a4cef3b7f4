"""Meta-training and evaluation: the outer loop, 95% confidence intervals, checkpoints and resume.

Determinism: task ``i`` of a sampler is a pure function of ``(sampler seed, i)`` and step ``t``
uses tasks ``t*B .. t*B+B-1``. A checkpoint therefore only needs the step, the meta-parameters,
the optimiser state and the history: a resumed run ends where an uninterrupted one would.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .algorithms import MetaLearner, Reptile
from .tasks import TaskBatch

__all__ = ["EvalResult", "evaluate", "meta_train", "make_optimizer", "save_checkpoint", "load_checkpoint",
           "confidence_interval", "NonFiniteError"]

Grads = dict[str, Tensor]


class NonFiniteError(FloatingPointError):
    """Raised when a loss or meta-gradient becomes NaN/inf, naming the step and the parameter."""


def confidence_interval(values: Tensor, z: float = 1.96) -> tuple[float, float]:
    """Mean and half-width of the normal-approximation 95% interval of the mean."""
    v = values.double().flatten()
    if v.numel() < 2:
        return v.mean().item(), float("nan")
    return v.mean().item(), (z * v.std(unbiased=True) / math.sqrt(v.numel())).item()


@dataclass
class EvalResult:
    """Mean score over a fixed set of test tasks with its 95% confidence interval."""

    metric: str
    mean: float
    ci95: float
    n_tasks: int
    steps: int | None
    settings: dict = field(default_factory=dict)
    scores: Tensor | None = field(default=None, repr=False)

    def __str__(self) -> str:
        scale, unit = (100.0, "%") if self.metric == "accuracy" else (1.0, "")
        extras = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        steps = "" if self.steps is None else f", {self.steps} test steps"
        return (f"{self.metric} {self.mean * scale:.2f}{unit} +/- {self.ci95 * scale:.2f}{unit} "
                f"(95% CI, {self.n_tasks} tasks{steps}; {extras})")

    def as_dict(self) -> dict:
        return {"metric": self.metric, "mean": self.mean, "ci95": self.ci95, "n_tasks": self.n_tasks,
                "steps": self.steps, **self.settings}


def evaluate(learner: MetaLearner, sampler, *, n_tasks: int = 600, steps: int | None = None, batch_size: int = 32,
             indices: Iterable[int] | None = None, progress: bool = False,
             gather: Callable[[Tensor], Tensor] | None = None) -> EvalResult:
    """Score ``learner`` on tasks ``0 .. n_tasks-1`` of ``sampler`` (a fixed, reproducible test set).

    ``steps`` is the number of adaptation steps at test time (the learner's own by default).
    ``indices`` overrides which tasks are used (the distributed evaluator passes each rank its
    share) and ``gather`` collects per-task scores from all ranks before the interval is computed.
    """
    idx = list(range(n_tasks) if indices is None else indices)
    scores = []
    was_training = learner.training
    learner.eval()
    for start in tqdm(range(0, len(idx), batch_size), desc="evaluate", leave=False, disable=not progress):
        batch = sampler.batch(idx[start:start + batch_size])
        scores.append(learner.evaluate_batch(batch, steps=steps).detach())
    learner.train(was_training)
    all_scores = torch.cat(scores) if scores else torch.empty(0)
    if gather is not None:
        all_scores = gather(all_scores)
    mean, ci = confidence_interval(all_scores)
    used_steps = steps if steps is not None else getattr(getattr(learner, "inner", None), "steps", None)
    return EvalResult(learner.problem.score_name, mean, ci, all_scores.numel(), used_steps, learner.describe(),
                      all_scores.cpu())


def make_optimizer(learner: MetaLearner, name: str | None = None, lr: float | None = None) -> torch.optim.Optimizer:
    """Adam(1e-3) for gradient-based learners and ProtoNets; SGD(1.0) for Reptile (its step size epsilon)."""
    if name is None:
        name = "sgd" if isinstance(learner, Reptile) else "adam"
    params = list(learner.meta_parameters().values())
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-3 if lr is None else lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1.0 if lr is None else lr)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``: tensors and plain containers only)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _check_finite(step: int, metrics: dict[str, float], grads: Grads) -> None:
    flags = torch.stack([torch.isfinite(g).all() for g in grads.values()])
    loss = metrics.get("loss")
    loss_ok = loss is None or math.isfinite(loss)
    if loss_ok and bool(flags.all()):
        return
    bad = [k for k, ok in zip(grads, flags.tolist()) if not ok]
    what = [] if loss_ok else [f"loss = {loss}"]
    if bad:
        what.append(f"non-finite meta-gradient in {bad}")
    raise NonFiniteError(f"meta-training diverged at step {step}: {'; '.join(what)}. Lower the inner or "
                         f"outer learning rate, clip gradients, or check the data for NaNs.")


def meta_train(learner: MetaLearner, sampler, *, steps: int, meta_batch: int = 32,
               optimizer: torch.optim.Optimizer | None = None,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
               val_sampler=None, val_every: int = 500, val_tasks: int = 100, val_steps: int | None = None,
               checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 500, resume: bool = True,
               time_budget: float | None = None, progress: bool = True,
               snapshot_every: int | None = None, run_settings: dict | None = None,
               task_indices: Callable[[int], list[int]] | None = None,
               reduce: Callable[[Grads, dict[str, float]], tuple[Grads, dict[str, float]]] | None = None,
               is_main: bool = True) -> pd.DataFrame:
    """Meta-train ``learner`` for ``steps`` outer steps of ``meta_batch`` tasks; return the history.

    * ``val_sampler``: every ``val_every`` steps, evaluate on its first ``val_tasks`` tasks;
    * ``checkpoint``: file written atomically every ``checkpoint_every`` steps and at the end;
      with ``resume=True`` an existing file is loaded and training continues from its step;
    * ``scheduler``: an optional learning-rate scheduler, stepped after every outer step;
    * ``time_budget``: stop after this many seconds of training (history says where);
    * ``snapshot_every``: also keep the meta-parameters every N steps in ``<checkpoint>.snapshots/``
      (for accuracy-against-time curves);
    * ``run_settings``: what defines the run (e.g. the CLI's options); stored in the checkpoint, and a
      resume with different settings stops with an error naming them;
    * ``task_indices``/``reduce``/``is_main``: hooks for :mod:`metalib.distributed` (which tasks this
      process draws at a step, how gradients and metrics are combined, who writes files); an optional
      ``reduce.agree(flag) -> bool`` makes the ``time_budget`` stop a decision of all processes.
    """
    optimizer = optimizer or make_optimizer(learner)
    params = learner.meta_parameters()
    history: list[dict] = []
    running: dict[str, list[float]] = {}
    start, elapsed, cpu = 0, 0.0, 0.0
    if checkpoint is not None and resume and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, map_location=next(iter(params.values())).device)
        _check_same_run(checkpoint, state.get("run_settings"), run_settings)
        learner.load_state_dict(state["learner"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        start, history, elapsed = state["step"], list(state["history"]), state.get("elapsed", 0.0)
        cpu = state.get("cpu_s", 0.0)
        running = {k: list(v) for k, v in state.get("running", {}).items()}

    def save(step: int) -> None:
        if checkpoint is not None and is_main:
            save_checkpoint(checkpoint, {"step": step, "learner": learner.state_dict(),
                                         "optimizer": optimizer.state_dict(), "history": history,
                                         "scheduler": None if scheduler is None else scheduler.state_dict(),
                                         "running": running, "elapsed": elapsed, "cpu_s": cpu,
                                         "settings": learner.describe(), "run_settings": run_settings})

    def snapshot(step: int) -> None:
        if checkpoint is not None and is_main:
            folder = Path(checkpoint).with_name(Path(checkpoint).name + ".snapshots")
            save_checkpoint(folder / f"step{step:07d}.pt", {"step": step, "learner": learner.state_dict(),
                                                           "elapsed": elapsed, "cpu_s": cpu})

    indices = task_indices or (lambda t: list(range(t * meta_batch, (t + 1) * meta_batch)))
    learner.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=learner.name, disable=not (progress and is_main))
    clock, cpu_clock = time.perf_counter(), time.process_time()
    done = start
    for step in bar:
        batch: TaskBatch = sampler.batch(indices(step))
        grads, metrics = learner.meta_gradient(batch)
        if reduce is not None:
            grads, metrics = reduce(grads, metrics)
        _check_finite(step, metrics, grads)
        for k, p in params.items():
            p.grad = grads[k]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        for k, v in metrics.items():
            running.setdefault(k, []).append(v)
        done = step + 1
        # training time only (validation and file writes excluded): wall clock and process CPU time
        elapsed += time.perf_counter() - clock
        cpu += time.process_time() - cpu_clock
        if done % val_every == 0 or done == steps:
            row = {"step": done, **{f"train_{k}": sum(v) / len(v) for k, v in running.items()}, "time_s": elapsed,
                   "cpu_s": cpu}
            running = {}
            if val_sampler is not None:
                res = evaluate(learner, val_sampler, n_tasks=val_tasks, steps=val_steps,
                               indices=indices_for_eval(val_tasks, task_indices), gather=getattr(reduce, "gather", None))
                row.update({f"val_{res.metric}": res.mean, "val_ci95": res.ci95})
            history.append(row)
            bar.set_postfix({k: round(v, 4) for k, v in row.items() if k.startswith(("train_", "val_"))})
        if snapshot_every and done % snapshot_every == 0:
            snapshot(done)
        if checkpoint is not None and done % checkpoint_every == 0:
            save(done)
        out_of_time = time_budget is not None and elapsed >= time_budget
        if time_budget is not None and hasattr(reduce, "agree"):  # ranks' clocks differ: all must stop together
            out_of_time = reduce.agree(out_of_time)
        clock, cpu_clock = time.perf_counter(), time.process_time()
        if out_of_time:
            break
    if running:
        history.append({"step": done, **{f"train_{k}": sum(v) / len(v) for k, v in running.items()},
                        "time_s": elapsed, "cpu_s": cpu})
    save(done)
    return pd.DataFrame(history)


def _check_same_run(checkpoint, saved: dict | None, wanted: dict | None) -> None:
    """A resumed run must be the same run: compare the settings recorded in the checkpoint."""
    if saved is None or wanted is None:
        return
    differ = {k: (saved.get(k), wanted.get(k)) for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)}
    if differ:
        what = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise ValueError(f"checkpoint {checkpoint} belongs to a different run ({what}); resume with the same "
                         f"settings, or start over with another checkpoint path or --no-resume")


def indices_for_eval(n_tasks: int, task_indices) -> list[int] | None:
    """All evaluation tasks, or this process's share of them when training is sharded."""
    share = getattr(task_indices, "eval_share", None)
    return None if share is None else share(n_tasks)

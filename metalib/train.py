"""Meta-training: the outer loop, with validation, checkpoints and resume.

Determinism: task ``i`` of a sampler is a pure function of ``(sampler seed, i)`` and step ``t``
uses the tasks :meth:`~metalib.tasks.TaskSampler.step_indices` names. A checkpoint therefore only
needs the step, the meta-parameters, the optimiser state and the history: a resumed run ends where
an uninterrupted one would.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from .algorithms import MetaLearner
from .checkpoints import (CheckpointError, check_same_run, check_writable, load_checkpoint, require_keys, restore,
                          save_checkpoint, snapshot_dir, sweep_folder, sweep_temporaries)
from .errors import UserError
from .outputs import OutputInUseError, OutputLock
from .evaluate import evaluate
from .execution import LOCAL, Execution
from .tasks import TaskBatch, check_count
from .utils import show_progress
from .params import Params

__all__ = ["meta_train", "make_optimizer", "NonFiniteError", "TrainingInterrupted"]


class NonFiniteError(UserError, FloatingPointError):
    """Raised when a loss or meta-gradient becomes NaN/inf, naming the step and the parameter."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT (Ctrl-C, a notebook's interrupt) or SIGTERM after finishing its step; the
    checkpoint holds that step, so calling :func:`meta_train` again with the same arguments resumes the same run."""

    def __init__(self, step: int, checkpoint: str | os.PathLike | None, signal_name: str):
        self.step, self.checkpoint = step, checkpoint
        where = (f"saved to {checkpoint}; run the same command again to resume" if checkpoint is not None else
                 "nothing was saved (no checkpoint was given)")
        super().__init__(f"training interrupted ({signal_name}) at step {step}: {where}")


class _StopRequests:
    """While active, SIGINT and SIGTERM only ask the loop to stop after the current step (a second SIGINT
    interrupts at once). Signals can only be handled in the main thread; elsewhere this does nothing.

    With several processes SIGTERM keeps its default (torchrun stops a failed job's ranks with it), and a second
    SIGINT within ``grace_s`` of the first is not a second request: torchrun forwards the terminal's Ctrl-C to
    ranks that got it already. (Not exercised by the tests: they interrupt single processes.)"""

    def __init__(self, processes: int, grace_s: float = 2.0):
        self.received: str | None = None
        self._signals = [signal.SIGINT] + ([signal.SIGTERM] if processes == 1 else [])
        self._grace = grace_s if processes > 1 else 0.0
        self._previous: dict[int, object] = {}
        self._at = 0.0

    def _handler(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            if time.monotonic() - self._at >= self._grace:
                raise KeyboardInterrupt
            return
        self.received, self._at = signal.Signals(signum).name, time.monotonic()

    def __enter__(self) -> "_StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in self._signals:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():  # None: a handler not installed from Python (restore the default)
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)


def make_optimizer(learner: MetaLearner, name: str | None = None, lr: float | None = None) -> torch.optim.Optimizer:
    """The learner's default outer optimiser (Adam 1e-3; SGD 1.0 for Reptile), or ``name`` at ``lr``."""
    return learner.default_optimizer(name, lr)


def _check_finite(step: int, metrics: dict[str, float], grads: Params) -> None:
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
               execution: Execution = LOCAL, on_row: Callable[[dict], None] | None = None) -> pd.DataFrame:
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
    * ``execution``: where the steps run (:mod:`metalib.execution`; one process by default,
      :func:`metalib.distributed.distributed_meta_train` passes a sharded one);
    * ``on_row``: called (on the main process) with each history row as it is recorded, e.g. to log
      progress to a file when no progress bar is shown.

    History rows hold the averaged training metrics, ``time_s`` (training wall clock, validation
    excluded), ``cpu_s`` (this process's CPU time over the same spans) and validation results.
    """
    steps, meta_batch = check_count("steps", steps), check_count("meta_batch", meta_batch)
    val_every, checkpoint_every = check_count("val_every", val_every), check_count("checkpoint_every", checkpoint_every)
    if val_sampler is not None:
        val_tasks = check_count("val_tasks", val_tasks)
    if snapshot_every:
        snapshot_every = check_count("snapshot_every", snapshot_every)
    optimizer = optimizer or make_optimizer(learner)
    learner.check_tasks(sampler)
    if val_sampler is not None:
        learner.check_tasks(val_sampler)
    with ExitStack() as held:
        if checkpoint is not None:
            check_writable(checkpoint)
            if snapshot_every:
                check_writable(snapshot_dir(checkpoint) / "step0000000.pt", "snapshot")
            _lock(held, checkpoint, execution)
        stops = held.enter_context(_StopRequests(execution.processes))
        return _meta_train(learner, sampler, steps, meta_batch, optimizer, scheduler, val_sampler, val_every,
                           val_tasks, val_steps, checkpoint, checkpoint_every, resume, time_budget, progress,
                           snapshot_every, run_settings, execution, on_row, stops)


def _meta_train(learner, sampler, steps, meta_batch, optimizer, scheduler, val_sampler, val_every, val_tasks,
                val_steps, checkpoint, checkpoint_every, resume, time_budget, progress, snapshot_every, run_settings,
                execution, on_row, stops: _StopRequests) -> pd.DataFrame:
    params = learner.meta_parameters()
    history: list[dict] = []
    running: dict[str, list[float]] = {}
    start, elapsed, cpu = 0, 0.0, 0.0
    if checkpoint is not None and resume and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, map_location=next(iter(params.values())).device)
        require_keys(checkpoint, state, ("step", "learner", "optimizer", "history"), "a meta_train checkpoint")
        check_same_run(checkpoint, state.get("run_settings"), run_settings)
        restore(checkpoint, learner, state["learner"], f"learner ({learner.name})")
        # after restore: describe() may report learned values (R2D2's lambda), which are the checkpoint's now
        check_same_run(checkpoint, *_common(state.get("settings"), learner.describe()))
        kind = state.get("optimizer_class")  # another optimiser's state loads silently, then fails at its first step
        if kind is not None and kind != type(optimizer).__name__:
            raise CheckpointError(f"checkpoint {checkpoint} does not fit this optimizer ({type(optimizer).__name__}): "
                                  f"it was written with {kind}; resume with the same settings, or use another "
                                  f"checkpoint path or --no-resume")
        restore(checkpoint, optimizer, state["optimizer"], f"optimizer ({type(optimizer).__name__})")
        if scheduler is not None and state.get("scheduler") is not None:
            restore(checkpoint, scheduler, state["scheduler"], "learning-rate schedule")
        start, history, elapsed = state["step"], list(state["history"]), state.get("elapsed", 0.0)
        cpu = state.get("cpu_s", 0.0)
        running = {k: list(v) for k, v in state.get("running", {}).items()}

    def save(step: int) -> None:
        if checkpoint is not None and execution.is_main:
            save_checkpoint(checkpoint, {"step": step, "learner": learner.state_dict(),
                                         "optimizer": optimizer.state_dict(), "history": history,
                                         "optimizer_class": type(optimizer).__name__,
                                         "scheduler": None if scheduler is None else scheduler.state_dict(),
                                         "running": running, "elapsed": elapsed, "cpu_s": cpu,
                                         "settings": learner.describe(), "run_settings": run_settings})

    def snapshot(step: int) -> None:
        if checkpoint is not None and execution.is_main:
            save_checkpoint(snapshot_dir(checkpoint) / f"step{step:07d}.pt",
                            {"step": step, "learner": learner.state_dict(), "elapsed": elapsed, "cpu_s": cpu})

    learner.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=learner.name,
               disable=not (show_progress(progress) and execution.is_main))
    clock, cpu_clock = time.perf_counter(), time.process_time()
    done = start
    for step in bar:
        batch: TaskBatch = sampler.batch(execution.train_tasks(step, meta_batch))
        learner.set_training_step(step, steps)
        grads, metrics = execution.reduce(*learner.meta_gradient(batch))
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
                res = evaluate(learner, val_sampler, n_tasks=val_tasks, steps=val_steps, execution=execution)
                row.update({f"val_{res.metric}": res.mean, "val_ci95": res.ci95})
            history.append(row)
            if on_row is not None and execution.is_main:
                on_row(row)
            bar.set_postfix({k: round(v, 4) for k, v in row.items() if k.startswith(("train_", "val_"))})
        if snapshot_every and done % snapshot_every == 0:
            snapshot(done)
        if checkpoint is not None and done % checkpoint_every == 0:
            save(done)
        # every process must stop at the same step, whatever its own clock says or whichever got the signal
        out_of_time = time_budget is not None and execution.agree(elapsed >= time_budget)
        interrupted = execution.agree(stops.received is not None) if execution.processes > 1 else \
            stops.received is not None
        clock, cpu_clock = time.perf_counter(), time.process_time()
        if interrupted and done < steps:
            bar.close()
            save(done)  # with the running averages as they are, so the resumed history equals an uninterrupted one
            raise TrainingInterrupted(done, checkpoint, stops.received or "a signal in another process")
        if out_of_time:
            break
    # a signal during the last step: the run is complete, but the caller (e.g. the CLI's evaluation) must stop too
    if execution.agree(stops.received is not None) if execution.processes > 1 else stops.received is not None:
        save(done)
        raise TrainingInterrupted(done, checkpoint, stops.received or "a signal in another process")
    if running:
        history.append({"step": done, **{f"train_{k}": sum(v) / len(v) for k, v in running.items()},
                        "time_s": elapsed, "cpu_s": cpu})
    learner.finish_training(sampler)
    save(done)
    return pd.DataFrame(history)


def _lock(held: ExitStack, checkpoint: str | os.PathLike, execution: Execution) -> None:
    """One writer per checkpoint: the main process locks it (a second run stops here, naming the first), then
    sweeps what killed runs left; with several processes all of them stop if the lock is taken."""
    refused: OutputInUseError | None = None
    if execution.is_main:
        try:
            held.enter_context(OutputLock(checkpoint))
        except OutputInUseError as exc:
            refused = exc
    if (execution.agree(refused is not None) if execution.processes > 1 else refused is not None):
        raise refused or OutputInUseError(f"checkpoint {checkpoint} is being written by another run (see rank 0)")
    if execution.is_main:
        sweep_temporaries(checkpoint)
        sweep_folder(snapshot_dir(checkpoint))


_RENAMED = {"maml++": "mamlpp"}  # learner names recorded by earlier versions: the same learner
# describe() values that earlier versions recorded under a wrong label: the same run (MAML++ was said to adapt its head)
_RELABELLED = {"adapted": {"all but the per-step BatchNorm": "head"}}


def _common(saved: dict | None, now: dict) -> tuple[dict | None, dict]:
    """The recorded and the current learner settings, on the keys both have (a key added to or dropped from
    ``describe()`` since the checkpoint was written is a change of code, not of the run)."""
    if saved is None:
        return None, now
    saved = {k: _RENAMED.get(v, v) if k == "algorithm" else v for k, v in saved.items()}
    keys = set(saved) & set(now)
    relabelled = _RELABELLED if saved.get("algorithm") == "mamlpp" else {}
    saved = {k: now[k] if isinstance(now[k], str) and relabelled.get(k, {}).get(now[k]) == saved[k] else saved[k]
             for k in keys}
    return saved, {k: now[k] for k in keys}

"""A training run from parsed ``train_cli`` options: samplers, learner, optimiser and schedule, the settings
that define the run (stored in its checkpoint), its outputs checked before the first step, then training and the
final evaluation. :mod:`metalib.train_cli` parses and checks the options; this module runs them."""
from __future__ import annotations

import argparse

import pandas as pd
import torch

from .algorithms import MetaLearner, learner_spec
from .algorithms import build_learner as build_registered
from .checkpoints import check_writable, snapshot_dir
from .data import FewShotDataset
from .distributed import DistContext, distributed_evaluate, distributed_meta_train, init_distributed, prepare_once, \
    shutdown_distributed
from .errors import UserError
from .outputs import check_distinct, lock_path, write_atomic
from .tasks import ClassBatches, EpisodeSampler, SinusoidTasks
from .train import make_optimizer

__all__ = ["RUN_OPTIONS", "DATASET_PROBLEMS", "dataset_problem", "run_settings", "learner_from_options",
           "check_outputs", "samplers", "train_run", "IMAGE_OPTIONS"]

# the options that define a training run: resuming a checkpoint with any of them changed is refused
# (--steps only with the cosine schedule, which it shapes; otherwise a longer run continues the same run)
RUN_OPTIONS = ("algorithm", "dataset", "ways", "shots", "queries", "protocol", "hidden", "inner_lr", "inner_steps",
               "optimizer", "outer_lr", "lr_schedule", "lr_min", "lr_step_size", "lr_gamma", "meta_batch", "seed")

DATASET_PROBLEMS = {"omniglot": "classification", "sinusoid": "regression"}  # each dataset's tasks (the
# natural-image benchmarks and image folders are classification too: dataset_problem)
# recorded in a run's settings only where they are set, so that earlier (Omniglot, conv4) checkpoints keep theirs
IMAGE_OPTIONS = ("model", "image_size", "channels", "split_file", "split_seed")


def dataset_problem(dataset: str) -> str:
    """``"regression"`` for the sinusoids, ``"classification"`` for Omniglot, the benchmarks and image folders."""
    return DATASET_PROBLEMS.get(dataset, "classification")
_SEED_OFFSETS = {"train": 0, "val": 1, "test": 2}  # each split's task stream has its own seed



def run_settings(a: argparse.Namespace, learner: MetaLearner | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> dict[str, object]:
    """The options that define the run (stored in the checkpoint and compared on resume).

    With the built ``learner`` and ``optimizer``, options left to their defaults are stored as the values they
    resolved to, and ``_defaults`` records those values, so ``--inner-lr 0.4`` where 0.4 is the default is the
    same run, and so is an older checkpoint that recorded the default as ``None``."""
    settings = {k: getattr(a, k) for k in RUN_OPTIONS}
    if a.lr_schedule == "cosine":
        settings["steps"] = a.steps
    if a.train_split != "train":  # only where it is set, so earlier checkpoints keep their settings
        settings["train_split"] = a.train_split
    if getattr(a, "batch_size", None) is not None:
        settings["batch_size"] = a.batch_size
    settings.update({k: getattr(a, k) for k in IMAGE_OPTIONS
                     if getattr(a, k) is not None and (k != "model" or a.model != "conv4")})
    if getattr(a, "data_fingerprint", None):  # a folder or benchmark: its classes, sizes and normalisation
        settings["data"] = a.data_fingerprint
    spec = learner_spec(a.algorithm)
    # the algorithm's own settings (inner_lr/inner_steps are RUN_OPTIONS): recorded where they exist
    settings.update({k: v for k, v in a.learner_settings.as_dict().items() if k not in RUN_OPTIONS})
    if a.learner_settings.length_shapes_run():  # e.g. MAML++'s schedules: shares of --steps
        settings["steps"] = a.steps
    if learner is not None and optimizer is not None:
        inner = getattr(learner, "inner", None)  # the inner loop's settings, where the learner has one
        used = {"queries": 10 if a.dataset == "sinusoid" else 15, "optimizer": type(optimizer).__name__.lower(),
                "outer_lr": optimizer.defaults["lr"]}
        if inner is not None and spec.inner_loop:
            used.update(inner_lr=inner.lr, inner_steps=inner.steps)
        settings.update({k: v for k, v in used.items() if settings[k] is None})
        settings["_defaults"] = _defaults(a, learner)
    if getattr(a, "preprocess", None) is not None:  # not settings: what predicting on new images needs
        settings["_preprocess"] = a.preprocess.as_dict()
        settings["_eval_ways"] = a.eval_ways
    return settings


def _defaults(a: argparse.Namespace, learner: MetaLearner) -> dict[str, object]:
    """What the options that can be left unset resolve to when they are: an earlier checkpoint that recorded such
    an option as None (or did not record a setting added since) ran with this value."""
    optimizer = make_optimizer(learner)  # the learner's own default (Adam 1e-3; SGD 1.0 for Reptile)
    settings = learner_spec(a.algorithm).settings.defaults(dataset_problem(a.dataset))
    return {"queries": 10 if a.dataset == "sinusoid" else 15, "optimizer": type(optimizer).__name__.lower(),
            "outer_lr": optimizer.defaults["lr"], **settings}


def _scheduler(a: argparse.Namespace, optimizer: torch.optim.Optimizer):
    if a.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=a.steps, eta_min=a.lr_min)
    if a.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=a.lr_step_size, gamma=a.lr_gamma)
    return None


def samplers(a: argparse.Namespace, ctx: DistContext) -> dict[str, object]:
    """Train/val/test task samplers; Omniglot is prepared by rank 0 while the others wait."""
    dev = ctx.device
    if a.dataset == "sinusoid":
        queries = 10 if a.queries is None else a.queries
        return {s: SinusoidTasks(a.shots, queries if s == "train" else (a.eval_queries or queries), seed=a.seed + off,
                                 device=dev) for s, off in _SEED_OFFSETS.items()}
    wanted = ("train", "val", "test") if a.val_tasks > 0 else ("train", "test")
    if a.dataset == "omniglot":
        from .data import omniglot_splits

        read = [a.train_split if s == "train" else s for s in wanted]
        loaded = prepare_once(lambda: omniglot_splits(a.protocol, splits=read, data_dir=a.data_dir), ctx)
        splits = {s: loaded[r] for s, r in zip(wanted, read)}
    else:
        dataset = prepare_once(lambda: load_image_dataset(a), ctx)
        splits = {s: dataset[s] for s in wanted}
        a.data_fingerprint = dataset.fingerprint()
    queries = 15 if a.queries is None else a.queries
    ways, shots = a.eval_ways or a.ways, a.eval_shots or a.shots
    eval_queries = a.eval_queries or queries
    out = {s: EpisodeSampler(splits[s], ways, shots, eval_queries, seed=a.seed + _SEED_OFFSETS[s], device=dev)
           for s in wanted if s != "train"}
    if learner_spec(a.algorithm).training == "batches":  # supervised pre-training over every training class
        out["train"] = ClassBatches(splits["train"], a.batch_size, seed=a.seed, device=dev)
        if a.ways is not None and a.ways != out["train"].num_classes:
            raise UserError(f"{a.algorithm} pre-trains a head over all {out['train'].num_classes} training classes: "
                            f"--ways must be {out['train'].num_classes} (or left out), got {a.ways}")
        a.ways = out["train"].num_classes
    else:
        out["train"] = EpisodeSampler(splits["train"], a.ways, a.shots, queries, seed=a.seed, device=dev)
    return out


def load_image_dataset(a: argparse.Namespace) -> FewShotDataset:
    """The benchmark or image folder ``--dataset`` names, as the options say to read it."""
    from .data import is_benchmark, load_benchmark, load_image_folder

    if is_benchmark(a.dataset):
        return load_benchmark(a.dataset, data_dir=a.data_dir, image_size=a.image_size)
    return load_image_folder(a.dataset, image_size=a.image_size or 84, channels=a.channels, split_file=a.split_file,
                             seed=a.split_seed or 0)


def learner_from_options(a: argparse.Namespace, device: torch.device) -> MetaLearner:
    """The learner (model included, seeded) that the parsed options describe (the image format from
    ``a.preprocess``, which :func:`samplers` sets for image datasets; Omniglot's 28x28 grey otherwise)."""
    pre = getattr(a, "preprocess", None)
    return build_registered(a.algorithm, a.learner_settings, problem=dataset_problem(a.dataset), ways=a.ways,
                            eval_ways=a.eval_ways, hidden=a.hidden, seed=a.seed, device=device,
                            backbone=getattr(a, "model", None) or "conv4",
                            in_channels=pre.channels if pre else 1, image_size=pre.size if pre else 28)


def check_outputs(a: argparse.Namespace) -> None:
    """Every output path is checked before the first step (a failed final save would lose the run): writable,
    and no two outputs at one path (a history CSV written over the checkpoint would lose the run)."""
    if a.snapshot_every and not a.checkpoint:
        raise UserError("--snapshot-every keeps snapshots next to the checkpoint: pass --checkpoint too")
    if a.checkpoint:
        check_writable(a.checkpoint, "checkpoint")
    check_distinct({"--checkpoint": a.checkpoint, "--history-csv": a.history_csv,  # before a check creates a folder
                    "snapshot folder (<checkpoint>.snapshots)": snapshot_dir(a.checkpoint) if a.checkpoint else None,
                    "checkpoint's lock (<checkpoint>.lock)": lock_path(a.checkpoint) if a.checkpoint else None})
    if a.history_csv:
        check_writable(a.history_csv, "history CSV")
    if a.checkpoint and a.snapshot_every:
        check_writable(snapshot_dir(a.checkpoint) / "step0000000.pt", "snapshot")


def _history_line(row: dict) -> str:
    """One history row as a log line (``--no-progress``: a redirected log still shows how the run goes)."""
    fields = [f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("train_", "val_")) and k != "val_ci95"]
    if "val_ci95" in row:
        fields[-1] += f" +/- {row['val_ci95']:.4f}"
    return f"step {row['step']}: " + ", ".join(fields) + f"; {row['time_s'] / 60:.1f} min of training"


def train_run(a: argparse.Namespace, evaluate_after: bool) -> tuple[MetaLearner, pd.DataFrame]:
    check_outputs(a)
    ctx = init_distributed(a.backend, timeout=a.timeout, device=a.device)
    try:
        if ctx.world_size > 1 and a.meta_batch % ctx.world_size:
            # fail before any data preparation, on every rank alike
            raise UserError(f"--meta-batch {a.meta_batch} is not a multiple of the {ctx.world_size} "
                            f"processes; each must draw the same number of tasks")
        say = print if ctx.is_main else (lambda *_, **__: None)
        samplers_ = samplers(a, ctx)
        a.preprocess = getattr(samplers_["train"], "preprocess", None)
        learner = learner_from_options(a, ctx.device)
        optimizer = make_optimizer(learner, a.optimizer, a.outer_lr)
        scheduler = _scheduler(a, optimizer)
        say(f"{learner.name} on {a.dataset}: {ctx.world_size} process(es), backend={ctx.backend or 'none'}, "
            f"device={ctx.device}, meta-batch {a.meta_batch} ({a.meta_batch // ctx.world_size} per process)",
            flush=True)
        if getattr(a, "default_checkpoint", False):
            say(f"checkpoint: {a.checkpoint} (the default for --recipe {a.recipe}; pass --checkpoint to choose)",
                flush=True)
        val = samplers_.get("val") if a.val_tasks > 0 else None
        history = distributed_meta_train(
            learner, samplers_["train"], steps=a.steps, meta_batch=a.meta_batch, optimizer=optimizer, ctx=ctx,
            scheduler=scheduler, snapshot_every=a.snapshot_every or None, run_settings=run_settings(a, learner, optimizer),
            val_sampler=val, val_every=a.val_every, val_tasks=a.val_tasks, val_steps=a.eval_steps,
            checkpoint=a.checkpoint, checkpoint_every=a.checkpoint_every, resume=not a.no_resume,
            time_budget=a.time_budget, progress=a.progress,
            on_row=None if a.progress else (lambda row: say(_history_line(row), flush=True)))
        if evaluate_after:
            say(history.to_string(index=False), flush=True)
        if a.history_csv and ctx.is_main:
            write_atomic(a.history_csv, history.to_csv(index=False), "history CSV")
        if evaluate_after and a.eval_tasks > 0:
            result = distributed_evaluate(learner, samplers_["test"], n_tasks=a.eval_tasks, steps=a.eval_steps,
                                          ctx=ctx, progress=a.progress, batchnorm=a.eval_batchnorm)
            say(f"test {result}", flush=True)
        shutdown_distributed(synchronize=True)  # every rank done before any tears down its connections
    finally:
        shutdown_distributed()
    return learner, history

"""Meta-train and evaluate from the shell, in one process or many (``torchrun``).

One process::

    python -m metalib.train_cli --algorithm maml --dataset omniglot --ways 5 --shots 1 \\
        --steps 1000 --meta-batch 32 --checkpoint runs/maml.pt

Two processes on one machine (the global meta-batch is split across them)::

    torchrun --nproc-per-node 2 -m metalib.train_cli --algorithm maml --dataset omniglot --meta-batch 32 ...

Prints the training history and the final test evaluation with its 95% confidence interval (rank 0).
Running the same command again resumes from ``--checkpoint``, with any number of processes.
"""
from __future__ import annotations

import argparse
import inspect
import math
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from torch.distributed.elastic.multiprocessing.errors import record

from .algorithms import ALGORITHMS, MetaLearner, make_learner
from .distributed import (DEFAULT_TIMEOUT_S, DistContext, distributed_evaluate, distributed_meta_train,
                          init_distributed, prepare_once, shutdown_distributed)
from .inner import BATCHNORM_MODES
from .models import conv4, mlp
from .checkpoints import check_writable, snapshot_dir
from .outputs import check_distinct, lock_path, write_atomic
from .errors import UserError
from .recipes import RECIPES, get_recipe
from .tasks import EpisodeSampler, SinusoidTasks
from .train import TrainingInterrupted, make_optimizer

__all__ = ["build_parser", "build_learner", "parse_args", "main", "run", "run_settings", "train_recipe"]

# the options that define a training run: resuming a checkpoint with any of them changed is refused
# (--steps only with the cosine schedule, which it shapes; otherwise a longer run continues the same run)
RUN_OPTIONS = ("algorithm", "dataset", "ways", "shots", "queries", "protocol", "hidden", "inner_lr", "inner_steps",
               "optimizer", "outer_lr", "lr_schedule", "lr_min", "lr_step_size", "lr_gamma", "meta_batch", "seed")

EMBEDDING_LEARNERS = ("protonet", "r2d2", "attention")  # learners on an embedding (conv4 without a head), no inner loop
NO_INNER_LOOP = (*EMBEDDING_LEARNERS, "cnp")
ZERO_HEAD_LEARNERS = ("maml", "fomaml", "metasgd", "anil")
_SEED_OFFSETS = {"train": 0, "val": 1, "test": 2}  # each split's task stream has its own seed


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except where the help text already explains them (or for on/off flags)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or "") or isinstance(action, argparse._StoreTrueAction):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m metalib.train_cli",
        description="Meta-train a metalib learner, then evaluate it on held-out tasks (95% CI). "
                    "Launch with torchrun to split the meta-batch across processes.",
        formatter_class=_HelpFormatter)
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="start from a named training recipe (metalib.recipes); other options override its fields")
    g = p.add_argument_group("problem")
    g.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="maml", help="meta-learning algorithm")
    g.add_argument("--dataset", choices=["omniglot", "sinusoid"], default="omniglot",
                   help="omniglot: N-way K-shot classification with conv4; sinusoid: regression with an MLP")
    g.add_argument("--ways", type=int, default=None, help="classes per episode (omniglot; default 5)")
    g.add_argument("--shots", type=int, default=1, help="support examples per class (sinusoid: per task)")
    g.add_argument("--queries", type=int, default=None,
                   help="query examples per class (sinusoid: per task); default 15 for omniglot, 10 for sinusoid")
    g.add_argument("--protocol", choices=["vinyals", "lake"], default="vinyals",
                   help="Omniglot class split (lake has no validation split)")
    g.add_argument("--train-split", choices=["train", "trainval"], default="train",
                   help="vinyals classes to train on: train (1028 characters) or trainval (train + val, 1200 characters, "
                        "as Snell et al. and Finn et al. trained for their test figures; needs --val-tasks 0)")
    g.add_argument("--data-dir", default=None, help="local Omniglot copy (default: METALIB_DATA_DIR or download)")
    g.add_argument("--hidden", type=int, default=64, help="conv4 channels (omniglot)")

    g = p.add_argument_group("learner")
    g.add_argument("--inner-lr", type=float, default=None,
                   help="inner-loop step size (default: the algorithm's; 0.01 for sinusoid)")
    g.add_argument("--inner-steps", type=int, default=None, help="inner-loop steps in training")
    g.add_argument("--proximal", type=float, default=None,
                   help="imaml: lambda of the proximal term lambda/2 |phi - theta|^2 of the inner problem (default 1.0)")
    g.add_argument("--cg-steps", type=int, default=None,
                   help="imaml: conjugate-gradient iterations of the implicit gradient (default 5)")
    g.add_argument("--msl-steps", type=int, default=None,
                   help="mamlpp: outer steps over which the multi-step loss anneals to the last step's loss "
                        "(default: the paper's first 1/15 of --steps)")
    g.add_argument("--first-order-steps", type=int, default=None,
                   help="mamlpp: outer steps with first-order meta-gradients before second order "
                        "(default: the paper's first third of --steps)")
    g.add_argument("--inner-batches", type=int, default=None,
                   help="reptile: split each training support set into N class-balanced minibatches, one per inner "
                        "step in turn (Nichol et al.); default: the whole support set at every step")
    g.add_argument("--zero-head", action="store_true",
                   help="maml/fomaml/metasgd/anil: every task's head starts at zero (Kao et al.'s zeroing trick)")
    g.add_argument("--optimizer", choices=["adam", "sgd"], default=None,
                   help="outer optimiser (default: adam; sgd for reptile)")
    g.add_argument("--outer-lr", type=float, default=None,
                   help="outer learning rate (default: 1e-3; 1.0 for reptile)")
    g.add_argument("--lr-schedule", choices=["constant", "cosine", "step"], default="constant",
                   help="outer learning rate over the run: constant, cosine annealing to --lr-min over --steps, "
                        "or x --lr-gamma every --lr-step-size steps")
    g.add_argument("--lr-min", type=float, default=0.0, help="final learning rate of the cosine schedule")
    g.add_argument("--lr-step-size", type=int, default=2000, help="steps between decays of the step schedule")
    g.add_argument("--lr-gamma", type=float, default=0.5, help="decay factor of the step schedule")

    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=1000, help="outer steps")
    g.add_argument("--meta-batch", type=int, default=32,
                   help="global meta-batch (a multiple of the number of processes)")
    g.add_argument("--seed", type=int, default=0, help="model and task seeds")
    g.add_argument("--val-every", type=int, default=500, help="history row (and validation) every N steps")
    g.add_argument("--val-tasks", type=int, default=None,
                   help="validation tasks (0: no validation); default 100 for vinyals, 0 for lake (no validation split)")
    g.add_argument("--checkpoint", default=None,
                   help="checkpoint file; an existing one is resumed (default with --recipe: runs/<recipe>.pt)")
    g.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    g.add_argument("--no-resume", action="store_true", help="start over even if --checkpoint exists")
    g.add_argument("--time-budget", type=float, default=None, help="stop training after this many seconds")
    g.add_argument("--history-csv", default=None, help="also write the history to this CSV file (rank 0)")
    g.add_argument("--snapshot-every", type=int, default=0,
                   help="keep the meta-parameters every N steps in <checkpoint>.snapshots/ (0: never)")

    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-tasks", type=int, default=600, help="test tasks for the final evaluation (0: none)")
    g.add_argument("--eval-steps", type=int, default=None, help="adaptation steps at test time (default: training's)")
    g.add_argument("--eval-ways", type=int, default=None, help="classes per validation/test episode (default: --ways)")
    g.add_argument("--eval-shots", type=int, default=None, help="shots of validation/test episodes (default: --shots)")
    g.add_argument("--eval-batchnorm", choices=BATCHNORM_MODES, default="transductive",
                   help="test evaluation: a task's queries through the network together (transductive) or each "
                        "with the support set alone (inductive)")
    g.add_argument("--eval-queries", type=int, default=None,
                   help="queries per class of validation/test episodes (default: --queries)")

    g = p.add_argument_group("execution")
    g.add_argument("--device", default="auto", help="auto, cpu or cuda (each process uses cuda:LOCAL_RANK)")
    g.add_argument("--backend", choices=["gloo", "nccl"], default=None, help="default: nccl on GPUs, gloo on CPU")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help="seconds a process waits for the others before the job fails")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="progress bar on rank 0 (default: when stderr is a terminal)")
    g.add_argument("--traceback", action="store_true",
                   help="show the full traceback of errors that are otherwise printed as one line")
    return p


# options of one algorithm (or one dataset) and their defaults: passing one elsewhere is refused, not ignored
_ALGORITHM_OPTIONS = {"proximal": ("imaml", 1.0), "cg_steps": ("imaml", 5), "msl_steps": ("mamlpp", None),
                      "first_order_steps": ("mamlpp", None)}  # None: the learner's default (MAML++: the paper's share)
_OMNIGLOT_OPTIONS = ("ways", "eval_ways", "hidden", "train_split", "protocol")
_MAX_SEED = 2 ** 62  # each split's stream adds an offset to the seed; torch takes seeds below 2**64


def _finite(p: argparse.ArgumentParser, a: argparse.Namespace, name: str, low: float, *, above: bool = True,
            high: float | None = None) -> None:
    """``--name`` (if given) must be a finite number > ``low`` (``>=`` when ``above`` is false) and <= ``high``."""
    value = getattr(a, name)
    if value is None:
        return
    ok = math.isfinite(value) and (value > low if above else value >= low) and (high is None or value <= high)
    if not ok:
        rng = f"{'>' if above else '>='} {low:g}" + ("" if high is None else f" and <= {high:g}")
        p.error(f"--{name.replace('_', '-')} must be a finite number {rng}, got {value}")


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    recipe_note = f" (--recipe {a.recipe} sets it)" if a.recipe else ""
    for name in ("ways", "shots", "steps", "meta_batch", "val_every", "checkpoint_every", "hidden", "lr_step_size",
                 "queries", "eval_ways", "eval_shots", "eval_queries", "cg_steps"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for name in ("eval_steps", "inner_steps", "msl_steps", "first_order_steps"):
        if getattr(a, name) is not None and getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}")
    for name in ("inner_lr", "outer_lr", "time_budget", "proximal", "timeout"):
        _finite(p, a, name, 0.0)
    _finite(p, a, "lr_gamma", 0.0, high=1.0)
    _finite(p, a, "lr_min", 0.0, above=False)
    optimizer = a.optimizer or ("sgd" if a.algorithm == "reptile" else "adam")
    outer = a.outer_lr if a.outer_lr is not None else (1.0 if optimizer == "sgd" else 1e-3)
    if a.lr_schedule == "cosine" and a.lr_min > outer:
        p.error(f"--lr-min {a.lr_min:g} is above the outer learning rate {outer:g}: the cosine schedule anneals "
                f"down to --lr-min, so pass a smaller one")
    if not 0 <= a.seed < _MAX_SEED:
        p.error(f"--seed must be an integer in [0, 2**62), got {a.seed}")
    for name, (algorithm, default) in _ALGORITHM_OPTIONS.items():
        if getattr(a, name) is not None and a.algorithm != algorithm:
            p.error(f"--{name.replace('_', '-')} is an option of {algorithm}, not of {a.algorithm}{recipe_note}: "
                    f"drop it or use --algorithm {algorithm}")
    if a.dataset == "sinusoid":
        given = [f"--{n.replace('_', '-')}" for n in _OMNIGLOT_OPTIONS if getattr(a, n) != p.get_default(n)]
        if given:
            p.error(f"{', '.join(given)}: Omniglot option(s), but --dataset sinusoid draws regression tasks; drop them")
    if a.val_tasks is None:
        a.val_tasks = 100 if a.protocol == "vinyals" else 0
    elif a.protocol == "lake" and a.val_tasks > 0:
        p.error("--protocol lake has no validation split: pass --val-tasks 0 (or use --protocol vinyals)")
    if a.train_split == "trainval" and a.protocol != "vinyals":
        p.error("--train-split trainval is a vinyals split: drop it or use --protocol vinyals")
    if a.train_split == "trainval" and a.val_tasks > 0:
        p.error("--train-split trainval trains on the validation classes: pass --val-tasks 0 (no validation)")
    for name in ("val_tasks", "eval_tasks", "snapshot_every"):
        if getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}")
    if a.dataset == "sinusoid" and a.algorithm in EMBEDDING_LEARNERS:
        p.error(f"{a.algorithm} classifies with a head built from the support set: use --dataset omniglot")
    if a.dataset == "omniglot" and a.algorithm == "cnp":
        p.error("cnp is a regression learner: use --dataset sinusoid (for Omniglot, the black-box learner is attention)")
    if a.algorithm in NO_INNER_LOOP and (a.inner_lr is not None or a.inner_steps is not None):
        p.error(f"{a.algorithm} has no inner loop: drop --inner-lr/--inner-steps")
    if a.inner_batches is not None and (a.algorithm != "reptile" or a.inner_batches < 1):
        p.error(f"--inner-batches is a Reptile option (>= 1): use --algorithm reptile, got {a.algorithm} "
                f"with {a.inner_batches}")
    if a.inner_batches is not None and a.inner_batches > a.shots:
        p.error(f"--inner-batches {a.inner_batches} needs at least that many --shots per class (got {a.shots}): "
                f"each minibatch takes one example of every class or more")
    if a.zero_head and a.algorithm not in ZERO_HEAD_LEARNERS:
        p.error(f"--zero-head is an option of {', '.join(ZERO_HEAD_LEARNERS)}, not of {a.algorithm}")
    if a.zero_head and a.dataset != "omniglot":
        p.error("--zero-head needs a classifier's linear head: use --dataset omniglot")
    if a.algorithm == "pretrain" and a.inner_steps is not None:
        p.error("pretrain trains without inner steps; set test-time fine-tuning steps with --eval-steps")
    if a.algorithm == "protomaml" and a.dataset != "omniglot":
        p.error("protomaml starts each task's head at its class prototypes, so it classifies: use --dataset omniglot")
    if a.recipe is not None and a.checkpoint is None:
        a.checkpoint = str(Path("runs") / f"{a.recipe}.pt")
        a.default_checkpoint = True
    a.ways = 5 if a.ways is None else a.ways
    for name, (algorithm, default) in _ALGORITHM_OPTIONS.items():
        setattr(a, name, default if getattr(a, name) is None else getattr(a, name))


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse ``argv``; with ``--recipe`` the recipe's settings become the defaults, so explicit options win."""
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.recipe is not None:
        parser.parse_args(get_recipe(a.recipe).argv(), namespace=(recipe_ns := argparse.Namespace()))
        parser.set_defaults(**vars(recipe_ns))
        parser.set_defaults(recipe=a.recipe)
        a = parser.parse_args(argv)
        if a.algorithm != recipe_ns.algorithm:  # the recipe's other settings were chosen for its own algorithm
            parser.error(f"--recipe {a.recipe} trains {recipe_ns.algorithm}; --algorithm {a.algorithm} would keep its "
                         f"other settings for another algorithm: drop --algorithm, or drop --recipe and give the "
                         f"options yourself")
    _check_args(parser, a)
    return parser, a


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
    if a.algorithm == "imaml":  # only where they matter, so other runs' checkpoints keep their settings
        settings.update(proximal=a.proximal, cg_steps=a.cg_steps)
    if a.algorithm == "mamlpp":
        settings.update(msl_steps=a.msl_steps, first_order_steps=a.first_order_steps)
        if a.msl_steps is None or a.first_order_steps is None:  # the paper's shares of --steps: the length shapes it
            settings["steps"] = a.steps
    if a.inner_batches is not None:
        settings["inner_batches"] = a.inner_batches
    if a.zero_head:
        settings["zero_head"] = True
    if learner is not None and optimizer is not None:
        inner = getattr(learner, "inner", None)  # the inner loop's settings, where the learner has one
        used = {"queries": 10 if a.dataset == "sinusoid" else 15, "optimizer": type(optimizer).__name__.lower(),
                "outer_lr": optimizer.defaults["lr"]}
        if inner is not None and a.algorithm not in NO_INNER_LOOP:
            used.update(inner_lr=inner.lr, inner_steps=inner.steps)
        settings.update({k: v for k, v in used.items() if settings[k] is None})
        settings["_defaults"] = _defaults(a, learner)
    return settings


def _defaults(a: argparse.Namespace, learner: MetaLearner) -> dict[str, object]:
    """What the options of RUN_OPTIONS that can be left unset resolve to when they are: an earlier checkpoint that
    recorded such an option as None ran with this value."""
    optimizer = make_optimizer(learner)  # the learner's own default (Adam 1e-3; SGD 1.0 for Reptile)
    out = {"queries": 10 if a.dataset == "sinusoid" else 15, "optimizer": type(optimizer).__name__.lower(),
           "outer_lr": optimizer.defaults["lr"]}
    if a.algorithm not in NO_INNER_LOOP:
        factory = inspect.signature(ALGORITHMS[a.algorithm]).parameters
        factory = factory if "inner_lr" in factory else inspect.signature(ALGORITHMS["maml"]).parameters  # fomaml(**kw)
        out["inner_lr"] = 0.01 if a.dataset == "sinusoid" else factory["inner_lr"].default
        if "steps" in factory:
            out["inner_steps"] = factory["steps"].default
    return out


def _scheduler(a: argparse.Namespace, optimizer: torch.optim.Optimizer):
    if a.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=a.steps, eta_min=a.lr_min)
    if a.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=a.lr_step_size, gamma=a.lr_gamma)
    return None


def _samplers(a: argparse.Namespace, ctx: DistContext) -> dict[str, object]:
    """Train/val/test task samplers; Omniglot is prepared by rank 0 while the others wait."""
    dev = ctx.device
    if a.dataset == "sinusoid":
        queries = 10 if a.queries is None else a.queries
        return {s: SinusoidTasks(a.shots, queries if s == "train" else (a.eval_queries or queries), seed=a.seed + off,
                                 device=dev) for s, off in _SEED_OFFSETS.items()}
    from .data import omniglot_splits

    wanted = ("train", "val", "test") if a.val_tasks > 0 else ("train", "test")
    read = [a.train_split if s == "train" else s for s in wanted]
    loaded = prepare_once(lambda: omniglot_splits(a.protocol, splits=read, data_dir=a.data_dir), ctx)
    splits = {s: loaded[r] for s, r in zip(wanted, read)}
    queries = 15 if a.queries is None else a.queries
    ways, shots = a.eval_ways or a.ways, a.eval_shots or a.shots
    eval_queries = a.eval_queries or queries
    return {s: EpisodeSampler(splits[s], a.ways, a.shots, queries, seed=a.seed + _SEED_OFFSETS[s], device=dev)
            if s == "train" else
            EpisodeSampler(splits[s], ways, shots, eval_queries, seed=a.seed + _SEED_OFFSETS[s], device=dev)
            for s in wanted}


def build_learner(a: argparse.Namespace, device: torch.device) -> MetaLearner:
    """The learner (model included, seeded) that the parsed options describe."""
    kw: dict[str, object] = {}
    if a.algorithm == "cnp":
        return make_learner("cnp", None, seed=a.seed).to(device)
    if a.algorithm == "attention":
        kw.update(ways=max(a.ways, a.eval_ways or a.ways), seed=a.seed)
    if a.algorithm not in NO_INNER_LOOP:
        if a.inner_lr is not None or a.dataset == "sinusoid":
            kw["inner_lr"] = a.inner_lr if a.inner_lr is not None else 0.01
        if a.inner_steps is not None and a.algorithm != "pretrain":
            kw["steps"] = a.inner_steps
        kw["problem"] = "regression" if a.dataset == "sinusoid" else "classification"
        if a.algorithm == "imaml":
            kw.update(lam=a.proximal, cg_steps=a.cg_steps)
        if a.algorithm == "mamlpp":
            kw.update(msl_steps=a.msl_steps, first_order_steps=a.first_order_steps)
        if a.inner_batches is not None:
            kw["inner_batches"] = a.inner_batches
        if a.zero_head:
            kw["zero_head"] = True
    if a.dataset == "sinusoid":
        model = mlp(seed=a.seed, device=device)
    else:
        model = conv4(0 if a.algorithm in EMBEDDING_LEARNERS else a.ways, hidden=a.hidden, seed=a.seed, device=device)
    return make_learner(a.algorithm, model, **kw).to(device)  # learners with parameters of their own (r2d2, attention) too


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


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), train, evaluate, print; returns the exit status.

    A user's mistake (:class:`metalib.errors.UserError`) prints one line, ``error: ...``, and returns 2; ``--traceback`` shows the traceback instead."""
    _, a = parse_args(argv)
    try:
        return _run(a)
    except UserError as exc:
        if a.traceback:
            raise
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 2
    except TrainingInterrupted as exc:  # the step in progress was finished and saved
        print(str(exc), file=sys.stderr, flush=True)
        return 130
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training
        if a.traceback:
            raise
        where = f"the checkpoint {a.checkpoint} holds the last saved step; " if a.checkpoint else ""
        print(f"interrupted: {where}run the same command again to resume", file=sys.stderr, flush=True)
        return 130


def _run(a: argparse.Namespace) -> int:
    _train(a, evaluate_after=True)
    return 0


def _history_line(row: dict) -> str:
    """One history row as a log line (``--no-progress``: a redirected log still shows how the run goes)."""
    fields = [f"{k} {v:.4f}" for k, v in row.items() if k.startswith(("train_", "val_")) and k != "val_ci95"]
    if "val_ci95" in row:
        fields[-1] += f" +/- {row['val_ci95']:.4f}"
    return f"step {row['step']}: " + ", ".join(fields) + f"; {row['time_s'] / 60:.1f} min of training"


def _train(a: argparse.Namespace, evaluate_after: bool) -> tuple[MetaLearner, pd.DataFrame]:
    check_outputs(a)
    ctx = init_distributed(a.backend, timeout=a.timeout, device=a.device)
    try:
        if ctx.world_size > 1 and a.meta_batch % ctx.world_size:
            # fail before any data preparation, on every rank alike
            raise UserError(f"--meta-batch {a.meta_batch} is not a multiple of the {ctx.world_size} "
                            f"processes; each must draw the same number of tasks")
        say = print if ctx.is_main else (lambda *_, **__: None)
        samplers = _samplers(a, ctx)
        learner = build_learner(a, ctx.device)
        optimizer = make_optimizer(learner, a.optimizer, a.outer_lr)
        scheduler = _scheduler(a, optimizer)
        say(f"{learner.name} on {a.dataset}: {ctx.world_size} process(es), backend={ctx.backend or 'none'}, "
            f"device={ctx.device}, meta-batch {a.meta_batch} ({a.meta_batch // ctx.world_size} per process)",
            flush=True)
        if getattr(a, "default_checkpoint", False):
            say(f"checkpoint: {a.checkpoint} (the default for --recipe {a.recipe}; pass --checkpoint to choose)",
                flush=True)
        val = samplers.get("val") if a.val_tasks > 0 else None
        history = distributed_meta_train(
            learner, samplers["train"], steps=a.steps, meta_batch=a.meta_batch, optimizer=optimizer, ctx=ctx,
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
            result = distributed_evaluate(learner, samplers["test"], n_tasks=a.eval_tasks, steps=a.eval_steps,
                                          ctx=ctx, progress=a.progress, batchnorm=a.eval_batchnorm)
            say(f"test {result}", flush=True)
    finally:
        shutdown_distributed()
    return learner, history


def train_recipe(name: str, checkpoint: str | Path, *, device: str = "auto", data_dir: str | Path | None = None,
                 progress: bool = True, options: Sequence[str] = ()) -> tuple[MetaLearner, pd.DataFrame]:
    """Train recipe ``name`` in this process, exactly as ``python -m metalib.train_cli --recipe NAME
    --checkpoint CHECKPOINT`` does (resuming ``checkpoint`` when it holds the same run, keeping snapshots
    where the recipe does), without the final evaluation. Returns the learner and its history.

    A notebook's full profile calls this, so the numbers it shows come from the zoo's own recipes. ``options``:
    further command-line options, which override the recipe's (e.g. ``["--steps", "10"]`` for a smoke run)."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; the recipes are {sorted(RECIPES)}")
    argv = ["--recipe", name, "--checkpoint", str(checkpoint), "--device", str(device),
            "--progress" if progress else "--no-progress", *(["--data-dir", str(data_dir)] if data_dir else [])]
    _, a = parse_args([*argv, *options])
    return _train(a, evaluate_after=False)


# @record writes a failing rank's traceback where torchrun reports it ("Root Cause" in its summary)
main = record(run)

if __name__ == "__main__":
    sys.exit(main())

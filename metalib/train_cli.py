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
import dataclasses
import os
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd
from torch.distributed.elastic.multiprocessing.errors import record

from .algorithms import REGISTRY, MetaLearner, Settings, learner_spec
from .algorithms.registry import check_number
from .distributed import DEFAULT_TIMEOUT_S
from .errors import UserError
from .inner import BATCHNORM_MODES
from .recipes import RECIPES, get_recipe
from .train import TrainingInterrupted
from .data import BENCHMARKS
from .models import BACKBONES
from .training_run import DATASET_PROBLEMS, dataset_problem, train_run

__all__ = ["build_parser", "learner_options", "parse_args", "main", "run", "train_recipe"]


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
    g.add_argument("--algorithm", choices=sorted(REGISTRY), default="maml", help="meta-learning algorithm")
    g.add_argument("--dataset", default="omniglot", metavar="NAME_OR_FOLDER",
                   help="omniglot (N-way K-shot classification), sinusoid (regression with an MLP), a benchmark ("
                        f"{', '.join(sorted(BENCHMARKS))}) or a folder of your own images with one sub-folder per class")
    g.add_argument("--model", choices=BACKBONES, default="conv4", help="image backbone")
    g.add_argument("--image-size", type=int, default=None,
                   help="images are resized to this side (default: the benchmark's own; 84 for a folder)")
    g.add_argument("--channels", type=int, choices=[1, 3], default=None,
                   help="image folder: read images as grey (1) or RGB (3); default: as they are (mixed is an error)")
    g.add_argument("--split-file", default=None,
                   help="image folder: a JSON file {train: [...], val: [...], test: [...]} of class names, or a folder "
                        "of train.txt, val.txt, test.txt (default: a split by --split-seed, 64/16/20 percent of the "
                        "classes)")
    g.add_argument("--split-seed", type=int, default=None,
                   help="image folder without --split-file: the seed of its class split (default 0; separate from "
                        "--seed, so that runs with other seeds are tested on the same classes)")
    g.add_argument("--ways", type=int, default=None,
                   help="classes per episode (omniglot; default 5); for a pre-trained learner (baseline, simpleshot, "
                        "...) the classes of its pre-training head: all training classes, the default")
    g.add_argument("--batch-size", type=int, default=None,
                   help="images per pre-training minibatch of the learners trained on minibatches over every training "
                        "class (baseline, baseline_pp, simpleshot, linear_probe, finetune; default 64)")
    g.add_argument("--shots", type=int, default=1, help="support examples per class (sinusoid: per task)")
    g.add_argument("--queries", type=int, default=None,
                   help="query examples per class (sinusoid: per task); default 15 for omniglot, 10 for sinusoid")
    g.add_argument("--protocol", choices=["vinyals", "lake"], default="vinyals",
                   help="Omniglot class split (lake has no validation split)")
    g.add_argument("--train-split", choices=["train", "trainval"], default="train",
                   help="vinyals classes to train on: train (1028 characters) or trainval (train + val, 1200 characters, "
                        "as Snell et al. and Finn et al. trained for their test figures; needs --val-tasks 0)")
    g.add_argument("--data-dir", default=None,
                   help="folder with local dataset copies (default: METALIB_DATA_DIR, then the cache, then download)")
    g.add_argument("--hidden", type=int, default=64, help="conv4 channels (omniglot)")

    g = p.add_argument_group("learner", "each algorithm's settings (metalib.algorithms.registry); an option of "
                                        "another algorithm is refused")
    for name, (f, owners) in learner_options().items():
        help_ = f"{f.metadata['help']} (default: the algorithm's)" if len(owners) == len(REGISTRY) else \
            f"{f.metadata['help']} [{', '.join(owners)}]"
        if f.metadata["kind"] is bool:
            g.add_argument(_flag(name), action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            g.add_argument(_flag(name), type=f.metadata["kind"], default=None, help=help_)
    g.add_argument("--optimizer", choices=["adam", "sgd"], default=None,
                   help="outer optimiser (default: the algorithm's: adam, or sgd where it says so)")
    g.add_argument("--outer-lr", type=float, default=None,
                   help="outer learning rate (default: 1e-3 for adam, 1.0 for sgd)")
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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def learner_options() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """Every registered learner setting: its field and the learners that have it (one option each)."""
    out: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for name in sorted(REGISTRY):
        for k, f in REGISTRY[name].settings.options().items():
            out.setdefault(k, (f, []))[1].append(name)
    return out


# options of one dataset: passing one elsewhere is refused, not ignored
_OMNIGLOT_OPTIONS = ("ways", "eval_ways", "hidden", "train_split", "protocol")
_MAX_SEED = 2 ** 62  # each split's stream adds an offset to the seed; torch takes seeds below 2**64


def _finite(p: argparse.ArgumentParser, a: argparse.Namespace, name: str, low: float, *, above: bool = True,
            high: float | None = None) -> None:
    """``--name`` (if given) must be a finite number > ``low`` (``>=`` when ``above`` is false) and <= ``high``."""
    why = check_number(getattr(a, name), low=low, strict=above, high=high, nullable=True)
    if why:
        p.error(f"{_flag(name)} {why}")


def _check_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    recipe_note = f" (--recipe {a.recipe} sets it)" if a.recipe else ""
    for name in ("ways", "shots", "steps", "meta_batch", "val_every", "checkpoint_every", "hidden", "lr_step_size",
                 "queries", "eval_ways", "eval_shots", "eval_queries", "batch_size"):
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    for name in ("eval_steps",):
        if getattr(a, name) is not None and getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}")
    for name in ("outer_lr", "time_budget", "timeout"):
        _finite(p, a, name, 0.0)
    _finite(p, a, "lr_gamma", 0.0, high=1.0)
    _finite(p, a, "lr_min", 0.0, above=False)
    optimizer = a.optimizer or learner_spec(a.algorithm).optimizer
    outer = a.outer_lr if a.outer_lr is not None else (1.0 if optimizer == "sgd" else 1e-3)
    if a.lr_schedule == "cosine" and a.lr_min > outer:
        p.error(f"--lr-min {a.lr_min:g} is above the outer learning rate {outer:g}: the cosine schedule anneals "
                f"down to --lr-min, so pass a smaller one")
    if not 0 <= a.seed < _MAX_SEED:
        p.error(f"--seed must be an integer in [0, 2**62), got {a.seed}")
    _check_dataset(p, a)
    a.learner_settings = _learner_settings(p, a, recipe_note)
    if a.dataset == "sinusoid":
        given = [f"--{n.replace('_', '-')}" for n in _OMNIGLOT_OPTIONS if getattr(a, n) != p.get_default(n)]
        if given:
            p.error(f"{', '.join(given)}: Omniglot option(s), but --dataset sinusoid draws regression tasks; drop them")
    if a.val_tasks is None:
        a.val_tasks = 100 if a.protocol == "vinyals" else 0
    elif a.protocol == "lake" and a.val_tasks > 0:
        p.error("--protocol lake has no validation split: pass --val-tasks 0 (or use --protocol vinyals)")
    if a.train_split == "trainval" and a.dataset != "omniglot":
        p.error(f"--train-split trainval is an Omniglot split: drop it for --dataset {a.dataset}")
    if a.train_split == "trainval" and a.protocol != "vinyals":
        p.error("--train-split trainval is a vinyals split: drop it or use --protocol vinyals")
    if a.train_split == "trainval" and a.val_tasks > 0:
        p.error("--train-split trainval trains on the validation classes: pass --val-tasks 0 (no validation)")
    for name in ("val_tasks", "eval_tasks", "snapshot_every"):
        if getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(a, name)}")
    if a.recipe is not None and a.checkpoint is None:
        a.checkpoint = str(Path("runs") / f"{a.recipe}.pt")
        a.default_checkpoint = True
    if learner_spec(a.algorithm).training == "batches":
        if a.dataset == "sinusoid":
            p.error(f"{a.algorithm} pre-trains a classifier: use a classification dataset")
        a.batch_size = 64 if a.batch_size is None else a.batch_size
        a.eval_ways = a.eval_ways or 5  # a.ways (all training classes) is set once the data is read
        return
    if a.batch_size is not None:
        p.error(f"--batch-size is the minibatch of the learners pre-trained on minibatches, not of {a.algorithm} "
                f"(episodes: --ways, --shots, --queries, --meta-batch){recipe_note}: drop it")
    a.ways = 5 if a.ways is None else a.ways


def _check_dataset(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """``--dataset`` is a known name or an existing folder, and the image options fit it."""
    if a.dataset not in DATASET_PROBLEMS and a.dataset not in BENCHMARKS and not Path(a.dataset).expanduser().is_dir():
        p.error(f"--dataset {a.dataset}: neither a dataset ({', '.join(sorted([*DATASET_PROBLEMS, *BENCHMARKS]))}) "
                "nor an existing folder of images")
    folder = a.dataset not in DATASET_PROBLEMS and a.dataset not in BENCHMARKS
    for name in ("channels", "split_file", "split_seed"):
        if getattr(a, name) is not None and not folder:
            p.error(f"{_flag(name)} is an option of image folders, not of --dataset {a.dataset}: drop it")
    if a.split_file is not None and a.split_seed is not None:
        p.error("--split-seed draws a split; --split-file gives one: pass one of them")
    if folder:
        a.dataset = os.path.normpath(a.dataset)  # my_images/ and my_images are one folder, and one run
    if a.model == "resnet12" and a.hidden != p.get_default("hidden"):
        p.error("--hidden sets conv4's channels; ResNet-12's widths are fixed (64-160-320-640): drop it")
    if a.dataset in DATASET_PROBLEMS and a.image_size is not None:
        p.error(f"--image-size: --dataset {a.dataset} has a fixed input size: drop it")
    if a.dataset == "sinusoid" and a.model != "conv4":
        p.error("--model: --dataset sinusoid trains an MLP: drop it")
    if a.image_size is not None and not 8 <= a.image_size <= 1024:
        p.error(f"--image-size must be between 8 and 1024, got {a.image_size}")
    if a.dataset != "omniglot" and a.protocol != "vinyals":
        p.error(f"--protocol is an Omniglot split, not one of --dataset {a.dataset}: drop it")


def _learner_settings(p: argparse.ArgumentParser, a: argparse.Namespace, recipe_note: str) -> Settings:
    """The algorithm's settings from its options (the others refused), checked against the dataset's tasks; the
    namespace then holds the values they resolved to."""
    spec, problem = learner_spec(a.algorithm), dataset_problem(a.dataset)
    own = spec.settings.options()
    for name, (_, owners) in learner_options().items():
        if getattr(a, name) is not None and name not in own:
            hint = f"drop it or use --algorithm {owners[0]}" if len(owners) == 1 else "drop it"
            p.error(f"{_flag(name)} is an option of {', '.join(owners)}, not of {a.algorithm}{recipe_note}: {hint}")
    given = {k: getattr(a, k) for k in own if getattr(a, k) is not None}
    for name, why in spec.settings.check_values(given):
        p.error(f"{_flag(name)} {why}")
    why = spec.check_problem(problem)
    if why:
        p.error(f"{why}: use --dataset {next(d for d, q in DATASET_PROBLEMS.items() if q in spec.problems)}")
    settings = spec.settings.resolve(given, problem)
    why = settings.check_task(problem, a.shots)
    if why:
        p.error(f"{why}{recipe_note}")
    for k, v in settings.as_dict().items():
        setattr(a, k, v)
    return settings


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Parse ``argv``; with ``--recipe`` the recipe's settings become the defaults, so explicit options win."""
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.recipe is not None:
        recipe = get_recipe(a.recipe)
        parser.set_defaults(**recipe.options(), recipe=a.recipe)
        a = parser.parse_args(argv)
        if a.algorithm != recipe.algorithm:  # the recipe's other settings were chosen for its own algorithm
            parser.error(f"--recipe {a.recipe} trains {recipe.algorithm}; --algorithm {a.algorithm} would keep its "
                         f"other settings for another algorithm: drop --algorithm, or drop --recipe and give the "
                         f"options yourself")
    _check_args(parser, a)
    return parser, a


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
    train_run(a, evaluate_after=True)
    return 0


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
    return train_run(a, evaluate_after=False)


# @record writes a failing rank's traceback where torchrun reports it ("Root Cause" in its summary)
main = record(run)

if __name__ == "__main__":
    sys.exit(main())

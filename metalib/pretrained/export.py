"""Export a finished ``train_cli --recipe`` run into the model zoo: meta-parameters plus a manifest.

    python -m metalib.pretrained.export maml-omniglot-5w1s --checkpoint runs/maml-omniglot-5w1s.pt \\
        --command "python -m metalib.train_cli --recipe maml-omniglot-5w1s --checkpoint runs/..."

Evaluates the final meta-parameters on 600 fixed test tasks of every test column of the recipe, the
check subset (the first ``--check-tasks`` of them) that the tests re-evaluate, and every snapshot of
the run on ``--curve-tasks`` test tasks (accuracy against training time).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

from ..checkpoints import check_same_run, load_checkpoint, load_snapshots
from ..data import omniglot_splits
from ..evaluate import evaluate
from ..profiling import cpu_name
from ..recipes import get_recipe
from ..tasks import EpisodeSampler
from ..train import make_optimizer
from ..train_cli import parse_args
from ..training_run import learner_from_options, run_settings, samplers
from ..distributed import DistContext
from ..outputs import torch_save_atomic, write_atomic
from . import ZOO, file_sha256

TEST_SEED_OFFSET = 2  # train_cli's test stream: seed + 2


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def check_record(scores: torch.Tensor, ways: int, queries: int, n_tasks: int) -> dict:
    """What CI re-evaluates a shipped model against, from the evaluation's per-task ``scores``: the mean over the
    first ``n_tasks`` test tasks and each task's count of right queries (``check_correct``), so that any leading
    subset of them can be checked to rounding (the tasks are the evaluation's first, so nothing is evaluated twice)."""
    head = scores[:n_tasks].double()
    return {"check_tasks": len(head), "check_mean": head.mean().item(),
            "check_correct": [round(float(s) * ways * queries) for s in head]}


def zoo_test_sampler(split, ways: int, shots: int, queries: int, seed: int, device="cpu") -> EpisodeSampler:
    """The fixed test tasks of a zoo model: train_cli's test stream (sampler seed = run seed + 2)."""
    return EpisodeSampler(split, ways, shots, queries, seed=seed + TEST_SEED_OFFSET, device=device)


def recipe_results(learner, name: str, *, n_tasks: int = 600, data_dir=None, device="cpu") -> list[dict]:
    """``learner`` evaluated like a zoo model of recipe ``name``: every test column of the recipe, on its fixed
    test tasks (the first ``n_tasks``), with the recipe's test steps, in each of its BatchNorm modes. One dict per
    column and mode: ``ways``, ``shots``,
    ``queries``, ``n_tasks``, ``mean``, ``ci95``, ``test_steps``, ``batchnorm``, ``published``, and the per-task
    ``scores``."""
    recipe = get_recipe(name)
    split = omniglot_splits("vinyals", splits=["test"], data_dir=data_dir)["test"]
    rows = []
    for ways, shots in recipe.tests:
        sampler = zoo_test_sampler(split, ways, shots, recipe.eval_queries, recipe.seed, device)
        for mode in recipe.batchnorm:
            r = evaluate(learner, sampler, n_tasks=n_tasks, steps=recipe.eval_steps, batchnorm=mode)
            key = f"{ways}w{shots}s" + ("" if mode == "transductive" else f" {mode}")
            rows.append({"ways": ways, "shots": shots, "queries": recipe.eval_queries, "n_tasks": r.n_tasks,
                         "mean": r.mean, "ci95": r.ci95, "test_steps": r.steps, "batchnorm": r.settings["batchnorm"],
                         "published": recipe.published.get(key), "scores": r.scores})
    return rows


def reproduce(recipes, run_dir, *, device="auto", data_dir=None, n_tasks: int = 600, progress: bool = True,
              options=()) -> pd.DataFrame:
    """Retrain each recipe of ``recipes`` with :func:`metalib.train_cli.train_recipe` (checkpoint
    ``run_dir/<recipe>.pt``, resumed when present) and score it with :func:`recipe_results`; one row per recipe and
    test column, beside the shipped model's figure where there is one. What a notebook's full profile runs.
    ``options``: further ``train_cli`` options for every recipe (they override the recipe's fields)."""
    from ..train_cli import train_recipe
    from . import available, manifest

    rows = []
    for name in recipes:
        learner, _ = train_recipe(name, Path(run_dir) / f"{name}.pt", device=str(device), data_dir=data_dir,
                                   progress=progress, options=options)
        shipped = {(e["ways"], e["shots"], e["batchnorm"]): e["mean"] for e in manifest(name)["evaluation"]} \
            if name in available() else {}
        for row in recipe_results(learner, name, n_tasks=n_tasks, data_dir=data_dir, device=learner_device(learner)):
            key = (row["ways"], row["shots"], row["batchnorm"])
            rows.append({"recipe": name, "column": f"{row['ways']}-way {row['shots']}-shot",
                         "batchnorm": row["batchnorm"], "reproduced (%)": 100 * row["mean"], "95% CI": 100 * row["ci95"],
                         "shipped (%)": 100 * shipped[key] if key in shipped else None,
                         "published (%)": row["published"]})
    return pd.DataFrame(rows)


def learner_device(learner) -> torch.device:
    """The device of a learner's meta-parameters."""
    return next(iter(learner.parameters())).device


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metalib.pretrained.export", description=__doc__.split("\n")[0])
    p.add_argument("recipe", help="the recipe the run used (metalib.recipes)")
    p.add_argument("--checkpoint", required=True, help="the finished run's checkpoint")
    p.add_argument("--command", required=True, help="the exact command that trained it (recorded)")
    p.add_argument("--commit", default=None, help="the git commit the run was trained with (default: HEAD now)")
    p.add_argument("--machine", default=None, help="what it ran on (default: this CPU and its thread count)")
    p.add_argument("--note", default="", help="free text for the manifest (e.g. what shared the CPU)")
    p.add_argument("--eval-tasks", type=int, default=600)
    p.add_argument("--check-tasks", type=int, default=100)
    p.add_argument("--curve-tasks", type=int, default=200)
    a = p.parse_args(argv)
    recipe = get_recipe(a.recipe)
    if recipe.dataset != "omniglot":  # the zoo's evaluation protocol (test split, samplers, manifests) is Omniglot's
        raise SystemExit(f"error: recipe {a.recipe} trains on {recipe.dataset}; the zoo ships Omniglot models only "
                         "(its manifests, checks and curves use Omniglot's test split)")
    trained = recipe.weights or a.recipe  # a recipe with ``weights`` evaluates that recipe's run its own way
    if recipe.weights and not (ZOO / f"{recipe.weights}.pt").exists():
        raise SystemExit(f"error: recipe {a.recipe} evaluates the weights of {recipe.weights}: export that first")
    _, args = parse_args(["--recipe", a.recipe])
    _, trained_args = parse_args(["--recipe", trained])
    state = load_checkpoint(a.checkpoint)
    try:  # the checkpoint must be a run of the recipe that trains these weights
        runner = learner_from_options(trained_args, torch.device("cpu"))
        check_same_run(a.checkpoint, state.get("run_settings"),
                       run_settings(trained_args, runner, make_optimizer(runner, trained_args.optimizer,
                                                                         trained_args.outer_lr)))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    learner = learner_from_options(args, torch.device("cpu"))
    learner.load_state_dict(state["learner"])
    if state["step"] != recipe.steps:
        print(f"warning: the run stopped at step {state['step']} of {recipe.steps}", file=sys.stderr)
    split = omniglot_splits("vinyals", splits=["test"])["test"]
    steps = recipe.eval_steps
    evaluation = []
    for row in recipe_results(learner, a.recipe, n_tasks=a.eval_tasks):
        scores = row.pop("scores")
        evaluation.append({**row, "split": "vinyals/test", "sampler_seed": recipe.seed + TEST_SEED_OFFSET,
                           **check_record(scores, row["ways"], row["queries"], a.check_tasks)})
        print(f"{row['ways']}-way {row['shots']}-shot: {100 * row['mean']:.2f}% +/- {100 * row['ci95']:.2f}% "
              f"({row['n_tasks']} tasks, {row['test_steps'] or 'no'} test steps, batchnorm={row['batchnorm']})")
    curve = []
    ways, shots = recipe.tests[0]
    sampler = zoo_test_sampler(split, ways, shots, recipe.eval_queries, recipe.seed)
    probe = learner_from_options(args, torch.device("cpu"))
    snapshots = load_snapshots(a.checkpoint)
    train = samplers(args, DistContext())["train"] if snapshots and probe.tests_with_training_statistics else None
    for step, snap in snapshots.items():
        probe.load_state_dict(snap["learner"])
        if train is not None:  # what training derives at its end (a snapshot was taken before it)
            probe.finish_training(train)
        r = evaluate(probe, sampler, n_tasks=a.curve_tasks, steps=steps)
        curve.append({"step": step, "time_s": snap["elapsed"], "cpu_s": snap["cpu_s"], "mean": r.mean, "ci95": r.ci95})
        print(f"  step {step:6d}  {snap['elapsed'] / 60:6.1f} min  {100 * r.mean:.2f}% +/- {100 * r.ci95:.2f}")
    info = {
        "name": a.recipe, "recipe": recipe.as_dict(), **({"weights": recipe.weights} if recipe.weights else {}),
        "command": a.command,
        "git_commit": a.commit or _git_commit(), "torch": torch.__version__, "python": platform.python_version(),
        "machine": a.machine or f"{cpu_name()}, {torch.get_num_threads()} torch threads (CPU)",
        "steps": state["step"], "wall_clock_s": state.get("elapsed"), "cpu_s": state.get("cpu_s"),
        "note": a.note, "evaluation": evaluation, "curve": {"tasks": a.curve_tasks, "column": f"{ways}w{shots}s",
                                                            "points": curve},
        "history": state["history"], "parameters": sum(v.numel() for v in learner.zoo_state().values()),
    }
    if not recipe.weights:
        weights = {k: v.detach().to(torch.float32).contiguous() for k, v in learner.zoo_state().items()}
        torch_save_atomic(ZOO / f"{a.recipe}.pt", weights, "model file")
    info["sha256"] = file_sha256(ZOO / f"{trained}.pt")
    write_atomic(ZOO / f"{a.recipe}.json", json.dumps(info, indent=1) + "\n", "manifest")
    print(f"wrote {ZOO / a.recipe}.json" + ("" if recipe.weights else " and .pt") + "; next: python "
          "benchmarks/zoo_curves.py --write (BENCHMARKS.md's curve table, which tests/test_pretrained.py checks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

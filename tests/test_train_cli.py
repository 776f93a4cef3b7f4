"""The command line refuses nonsense before any work, in one line, and runs a recipe as the README shows it.

Each case here was accepted silently, or ended in a traceback, before (issue "Nothing lost, round two")."""
from __future__ import annotations

import pytest

from metalib.algorithms import maml
from metalib.checkpoints import load_checkpoint, save_checkpoint
from metalib.data.base import ClassSplit
from metalib.errors import ArgumentError
from metalib.models import conv4, mlp
from metalib.tasks import EpisodeSampler
from metalib.train import meta_train
from metalib.train_cli import parse_args, run
from metalib.training_run import check_outputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SINE = ["--dataset", "sinusoid", "--shots", "5", "--meta-batch", "2", "--val-tasks", "0", "--eval-tasks", "0",
        "--no-progress"]


@pytest.mark.parametrize("argv, expected", [
    (["--lr-gamma", "nan"], "--lr-gamma must be a finite number > 0 and <= 1, got nan"),
    (["--lr-gamma", "-1"], "--lr-gamma must be a finite number > 0 and <= 1, got -1.0"),
    (["--time-budget", "nan"], "--time-budget must be a finite number > 0, got nan"),
    (["--outer-lr", "-1"], "--outer-lr must be a finite number > 0, got -1.0"),
    (["--outer-lr", "nan"], "--outer-lr must be a finite number > 0, got nan"),
    (["--inner-lr", "nan"], "--inner-lr must be a finite number > 0, got nan"),
    (["--algorithm", "imaml", "--proximal", "inf"], "--proximal must be a finite number > 0, got inf"),
    (["--algorithm", "maml", "--proximal", "5"], "--proximal is an option of imaml, not of maml"),
    (["--msl-steps", "5"], "--msl-steps is an option of mamlpp, not of maml"),
    (["--dataset", "sinusoid", "--ways", "50"], "--ways: Omniglot option(s), but --dataset sinusoid"),
    (["--lr-schedule", "cosine", "--lr-min", "0.1"], "--lr-min 0.1 is above the outer learning rate 0.001"),
    (["--seed", str(2 ** 64)], "--seed must be an integer in [0, 2**62)"),
    (["--seed", "-1"], "--seed must be an integer in [0, 2**62)"),
    (["--algorithm", "protomaml", "--dataset", "sinusoid"], "protomaml starts each task's head at its class prototypes"),
    (["--recipe", "maml-omniglot-5w1s", "--algorithm", "anil"], "--recipe maml-omniglot-5w1s trains maml; "
                                                                 "--algorithm anil would keep its other settings"),
])
def test_nonsense_is_refused_before_any_work_in_one_line(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"python -m metalib.train_cli: error: {expected}")


def test_a_recipe_runs_as_the_readme_shows_it_with_a_default_checkpoint(tmp_path, monkeypatch):
    """`--recipe maml-omniglot-5w1s` alone used to stop with '--snapshot-every ... pass --checkpoint too'."""
    monkeypatch.chdir(tmp_path)
    _, a = parse_args(["--recipe", "maml-omniglot-5w1s"])
    assert a.checkpoint == "runs/maml-omniglot-5w1s.pt" and a.snapshot_every == 500
    check_outputs(a)  # no complaint about a flag the user never passed
    assert (tmp_path / "runs" / "maml-omniglot-5w1s.pt.snapshots").is_dir()


def test_divergence_is_one_line(tmp_path, capsys):
    assert run(SINE + ["--steps", "2", "--inner-lr", "1e30"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: meta-training diverged at step 0") and "\n" not in err


def test_an_explicit_option_equal_to_its_default_resumes_the_same_run(tmp_path, capsys):
    """`--inner-lr 0.01` (sinusoid's default) was refused on resume as a different run ('None' against 0.01)."""
    path = str(tmp_path / "run.pt")
    assert run(SINE + ["--steps", "2", "--checkpoint", path]) == 0
    assert run(SINE + ["--steps", "4", "--checkpoint", path, "--inner-lr", "0.01", "--outer-lr", "0.001",
                       "--optimizer", "adam", "--queries", "10"]) == 0
    assert load_checkpoint(path)["step"] == 4
    state = load_checkpoint(path)  # a checkpoint of the earlier code recorded the defaults as None
    state["run_settings"].update(inner_lr=None, outer_lr=None, optimizer=None, queries=None)
    del state["run_settings"]["_defaults"]
    save_checkpoint(path, state)
    assert run(SINE + ["--steps", "6", "--checkpoint", path, "--inner-lr", "0.01"]) == 0
    capsys.readouterr()
    assert run(SINE + ["--steps", "8", "--checkpoint", path, "--inner-lr", "0.02"]) == 2
    assert "inner_lr: checkpoint 0.01, now 0.02" in capsys.readouterr().err
    state = load_checkpoint(path)
    state["run_settings"].update(outer_lr=None)  # recorded as the default: another rate is another run
    save_checkpoint(path, state)
    assert run(SINE + ["--steps", "8", "--checkpoint", path, "--outer-lr", "0.002"]) == 2
    assert "outer_lr: checkpoint None, now 0.002" in capsys.readouterr().err


def test_the_cosine_floor_is_checked_against_the_optimisers_own_rate():
    parse_args(["--optimizer", "sgd", "--lr-schedule", "cosine", "--lr-min", "0.01"])  # SGD's default rate is 1.0
    with pytest.raises(SystemExit):
        parse_args(["--algorithm", "reptile", "--optimizer", "adam", "--lr-schedule", "cosine", "--lr-min", "0.01"])


def test_learners_check_their_model_and_settings_when_built_not_in_the_first_step(pattern_images):
    with pytest.raises(ArgumentError, match=r"maml classifies, but its model has 1 output .*mlp\(\)"):
        maml(mlp())
    with pytest.raises(ArgumentError, match="inner learning rate must be a finite number >= 0, got '0.1' "
                                            r"\(a string: pass a number"):
        maml(conv4(5), inner_lr="0.1")
    split = ClassSplit("train", pattern_images(8, 0), [f"c{i}" for i in range(8)])
    sampler = EpisodeSampler(split, ways=5, shots=1, queries=1, seed=0)
    with pytest.raises(ArgumentError, match=r"maml's model has 3 outputs but the tasks are 5-way: .* conv4\(5\)"):
        meta_train(maml(conv4(3)), sampler, steps=1, meta_batch=1, progress=False)

"""Training loop: resume equals an uninterrupted run, non-finite values stop with a clear error,
evaluation intervals are computed correctly."""
from __future__ import annotations

import math

import pytest
import torch

from metalib.algorithms import maml, metasgd, protonet, reptile
from metalib.models import conv4, mlp
from metalib.tasks import EpisodeSampler, SinusoidTasks
from metalib.checkpoints import load_checkpoint
from metalib.evaluate import confidence_interval, evaluate
from metalib.train import NonFiniteError, meta_train


def sine_learner(seed=0, **kw):
    return maml(mlp(seed=seed), inner_lr=0.01, steps=1, problem="regression", **kw)


def params_of(learner):
    return {k: v.detach().clone() for k, v in learner.state_dict().items()}


@pytest.mark.parametrize("make", [
    lambda: sine_learner(),
    lambda: metasgd(mlp(seed=0), inner_lr=0.01, problem="regression"),
    lambda: reptile(mlp(seed=0), inner_lr=0.01, steps=2, problem="regression"),
])
def test_resume_equals_uninterrupted_run(tmp_path, make):
    tasks = SinusoidTasks(shots=5, queries=10, seed=3)
    full = make()
    hist_full = meta_train(full, tasks, steps=8, meta_batch=4, val_every=4, checkpoint=tmp_path / "full.pt",
                           checkpoint_every=3, progress=False)

    class Crash(Exception):
        pass

    class CrashingTasks:  # the process dies while drawing the tasks of step 7
        def batch(self, indices):
            if indices[0] == 7 * 4:
                raise Crash
            return tasks.batch(indices)

    with pytest.raises(Crash):
        meta_train(make(), CrashingTasks(), steps=8, meta_batch=4, val_every=4, checkpoint=tmp_path / "run.pt",
                   checkpoint_every=3, progress=False)
    assert load_checkpoint(tmp_path / "run.pt")["step"] == 6
    resumed = make()  # a fresh process: new model, state comes from the checkpoint
    hist_resumed = meta_train(resumed, tasks, steps=8, meta_batch=4, val_every=4, checkpoint=tmp_path / "run.pt",
                              checkpoint_every=3, progress=False)
    a, b = params_of(full), params_of(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    cols = [c for c in hist_full.columns if c.startswith("train_")]
    assert hist_full[cols].equals(hist_resumed[cols])
    assert load_checkpoint(tmp_path / "run.pt")["step"] == 8
    # and training did something
    assert any(not torch.equal(a[k], params_of(make())[k]) for k in a)


def test_checkpoint_is_written_atomically_and_loads_weights_only(tmp_path):
    learner = sine_learner()
    meta_train(learner, SinusoidTasks(shots=5, queries=10, seed=0), steps=2, meta_batch=2,
               checkpoint=tmp_path / "ck.pt", checkpoint_every=1, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary file left behind
    state = load_checkpoint(tmp_path / "ck.pt")
    assert state["step"] == 2 and "learner" in state and "optimizer" in state


def test_non_finite_loss_stops_training_and_names_the_step():
    learner = maml(mlp(seed=0), inner_lr=1e6, steps=3, problem="regression")
    with pytest.raises(NonFiniteError, match=r"step \d+"):
        meta_train(learner, SinusoidTasks(shots=5, queries=10, seed=0), steps=5, meta_batch=2, progress=False)


def test_non_finite_gradient_names_the_step_and_parameter():
    learner = sine_learner()
    real = learner.meta_gradient

    def poisoned(batch):
        grads, metrics = real(batch)
        if len(calls) == 2:  # the third step goes wrong
            grads["head.bias"] = grads["head.bias"] * float("nan")
        calls.append(1)
        return grads, metrics

    calls: list[int] = []
    learner.meta_gradient = poisoned
    with pytest.raises(NonFiniteError) as err:
        meta_train(learner, SinusoidTasks(shots=5, queries=10, seed=0), steps=5, meta_batch=2, progress=False)
    assert "step 2" in str(err.value) and "head.bias" in str(err.value)
    assert "head.weight" not in str(err.value)


def test_confidence_interval_is_the_normal_95_interval():
    values = torch.tensor([0.0, 1.0] * 50)
    mean, ci = confidence_interval(values)
    assert mean == pytest.approx(0.5)
    assert ci == pytest.approx(1.96 * values.double().std().item() / math.sqrt(100))


def test_evaluate_is_reproducible_and_reports_settings():
    tasks = SinusoidTasks(shots=5, queries=10, seed=11)
    learner = sine_learner()
    r1 = evaluate(learner, tasks, n_tasks=20, steps=3, batch_size=8)
    r2 = evaluate(learner, tasks, n_tasks=20, steps=3, batch_size=5)
    assert r1.n_tasks == 20 and r1.steps == 3 and r1.metric == "mse"
    assert r1.mean == pytest.approx(r2.mean, rel=1e-5)
    assert r1.settings["batchnorm"] == "transductive"
    assert "95% CI" in str(r1)
    more = evaluate(learner, tasks, n_tasks=20, steps=10)
    assert more.steps == 10 and more.mean != pytest.approx(r1.mean)  # test-time steps are honoured


def test_protonet_learns_a_synthetic_task_family():
    # 30 classes, each a distinct random binary pattern plus noise: trivially separable
    g = torch.Generator().manual_seed(0)
    protos = (torch.rand(30, 1, 28, 28, generator=g) > 0.7).float()
    images = (protos[:, None] + 0.3 * torch.rand(30, 20, 1, 28, 28, generator=g)).clamp(0, 1)
    images = (images.squeeze(2) * 255).to(torch.uint8)
    sampler = EpisodeSampler(images, ways=5, shots=1, queries=5, seed=1)
    learner = protonet(conv4(0, hidden=16, seed=0))
    meta_train(learner, sampler, steps=20, meta_batch=4, progress=False)
    result = evaluate(learner, EpisodeSampler(images, ways=5, shots=1, queries=5, seed=2), n_tasks=40)
    assert result.mean > 0.9


def test_without_a_progress_bar_the_cli_logs_each_history_row_as_it_is_recorded(tmp_path, capsys, monkeypatch):
    """``--no-progress`` into a log file (nohup) must show how a long run goes, not only its final table."""
    from metalib.train_cli import run

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = ["--dataset", "sinusoid", "--shots", "5", "--steps", "4", "--meta-batch", "2", "--val-every", "2",
            "--val-tasks", "3", "--eval-tasks", "0"]
    assert run([*base, "--no-progress", "--checkpoint", str(tmp_path / "a.pt")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("step ")]
    assert [r.split(":")[0] for r in rows] == ["step 2", "step 4"]
    assert all("train_loss" in r and "val_mse" in r and " +/- " in r and r.endswith("min of training") for r in rows)
    assert out.index("step 4:") < out.index("train_loss  ")  # logged before the final table
    assert run([*base, "--progress", "--checkpoint", str(tmp_path / "b.pt")]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]


def test_trainval_training_draws_the_papers_1200_characters_and_is_part_of_the_run(tmp_path, omniglot_data_dir,
                                                                                   capsys, monkeypatch):
    """``--train-split trainval`` trains on train + val (4800 rotated classes against train's 4112), refuses a
    validation set that would then be seen in training, and a checkpoint of one split does not resume the other."""
    from metalib.distributed import DistContext
    from metalib.train_cli import parse_args, run
    from metalib.training_run import samplers as split_samplers

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    counts = {}
    for split in ("train", "trainval"):
        _, a = parse_args(["--algorithm", "protonet", "--train-split", split, "--val-tasks", "0",
                           "--data-dir", str(omniglot_data_dir)])
        samplers = split_samplers(a, DistContext())
        counts[split] = (samplers["train"].num_classes, samplers["test"].num_classes)
    assert counts == {"train": (4112, 1692), "trainval": (4800, 1692)}

    base = ["--algorithm", "protonet", "--ways", "5", "--queries", "2", "--steps", "1", "--val-tasks", "0",
            "--eval-tasks", "0", "--data-dir", str(omniglot_data_dir), "--checkpoint", str(tmp_path / "run.pt"),
            "--no-progress"]
    assert run(base + ["--train-split", "trainval"]) == 0
    capsys.readouterr()
    assert run(base) == 2  # the same checkpoint, now on train only: another run
    assert "belongs to a different run" in capsys.readouterr().err
    for bad, fix in ((["--val-tasks", "10"], "--val-tasks 0"), (["--protocol", "lake"], "--protocol vinyals")):
        with pytest.raises(SystemExit):
            parse_args(["--algorithm", "protonet", "--train-split", "trainval", *bad])
        assert fix in capsys.readouterr().err

"""Checkpoints: nothing lost, every failure explained in one line, a resumed run is the same run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from metalib import SinusoidTasks, meta_train, mlp
from metalib.algorithms import maml
from metalib.outputs import OutputWriteError
from metalib.checkpoints import (CheckpointError, OutputPathError, check_writable, load_checkpoint, save_checkpoint,
                                 sweep_temporaries)
from metalib.train_cli import run


def _learner(seed=0, hidden=8):
    return maml(mlp((1, hidden, 1), seed=seed), inner_lr=0.01, problem="regression")


class CountingTasks(SinusoidTasks):
    """Counts the meta-batches drawn: a check that fails must fail before the first step."""
    drawn = 0

    def batch(self, indices):
        CountingTasks.drawn += 1
        return super().batch(indices)


def _train(path, learner=None, steps=2, **kw):
    return meta_train(learner or _learner(), SinusoidTasks(5, seed=0), steps=steps, meta_batch=2, checkpoint=path,
                      progress=False, **kw)


@pytest.mark.parametrize("content, expected", [
    (b"", "is empty"),
    (b"not a zip or a pickle", "cannot be read as a metalib checkpoint"),
    (None, "holds a, b, not a meta_train checkpoint"),
])
def test_corrupt_empty_or_foreign_checkpoints_are_named_in_one_line(tmp_path, content, expected):
    path = tmp_path / "run.pt"
    if content is None:
        torch.save({"a": 1, "b": torch.zeros(1)}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as err:
        _train(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value) and "--no-resume" in str(err.value)


def test_a_checkpoint_with_python_objects_is_refused_without_torch_advice(tmp_path):
    path = tmp_path / "run.pt"
    torch.save({"step": 1, "learner": OutputPathError("a Python object")}, path)
    with pytest.raises(CheckpointError, match="not written by metalib") as err:
        load_checkpoint(path)
    assert "weights_only=False" not in str(err.value)


def test_a_checkpoint_of_another_model_or_optimiser_is_named(tmp_path):
    path = tmp_path / "run.pt"
    _train(path, _learner(hidden=8))
    with pytest.raises(CheckpointError, match="does not fit this learner"):
        _train(path, _learner(hidden=16))
    learner = _learner(hidden=8)
    with pytest.raises(CheckpointError, match="does not fit this optimizer"):
        _train(path, learner, optimizer=torch.optim.SGD(learner.parameters(), lr=0.1, momentum=0.9))


def test_output_paths_are_checked_before_the_first_step(tmp_path):
    (tmp_path / "file").write_text("x")
    CountingTasks.drawn = 0
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        meta_train(_learner(), CountingTasks(5), steps=3, meta_batch=2, checkpoint=tmp_path / "file" / "run.pt",
                   progress=False)
    assert CountingTasks.drawn == 0
    with pytest.raises(OutputPathError, match="is a folder"):
        check_writable(tmp_path)
    assert check_writable(tmp_path / "new" / "run.pt").parent.is_dir()


@pytest.mark.parametrize("bad", [{"val_every": 0}, {"checkpoint_every": 0}, {"meta_batch": 0}, {"steps": 0}])
def test_zero_counts_are_rejected_before_training(tmp_path, bad):
    kw = {"steps": 2, "meta_batch": 2, **bad}
    CountingTasks.drawn = 0
    with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a positive integer"):
        meta_train(_learner(), CountingTasks(5), progress=False, **kw)
    assert CountingTasks.drawn == 0


def test_a_failed_write_leaves_no_temporary_file_and_says_no_space_in_one_line(tmp_path, full_disk):
    with pytest.raises(OutputWriteError) as err:
        save_checkpoint(tmp_path / "run.pt", {"step": 1})
    assert str(err.value) == (f"cannot write the checkpoint {tmp_path / 'run.pt'}: no space left on device (nothing "
                              f"was written); free some space and run the same command again")
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_swept_and_nothing_else(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".run.pt.tmp{dead.pid}"
    live = tmp_path / f".run.pt.tmp{os.getppid()}"
    mine = tmp_path / "run.pt.tmp-notes.txt"
    for p in (stale, live, mine):
        p.write_text("x")
    assert sweep_temporaries(tmp_path / "run.pt") == [stale]
    assert not stale.exists() and live.exists() and mine.exists()


def test_the_cli_refuses_to_resume_a_different_run_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = ["--dataset", "sinusoid", "--shots", "5", "--steps", "2", "--meta-batch", "2", "--val-tasks", "0",
            "--eval-tasks", "0", "--checkpoint", str(tmp_path / "run.pt"), "--no-progress"]
    assert run(base) == 0
    before = (tmp_path / "run.pt").read_bytes()
    for change in (["--algorithm", "fomaml"], ["--seed", "1"], ["--inner-lr", "0.02"], ["--meta-batch", "4"],
                   ["--algorithm", "anil"], ["--shots", "10"]):
        capsys.readouterr()
        assert run(base + change) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: checkpoint") and "belongs to a different run" in err and "\n" not in err
        assert (tmp_path / "run.pt").read_bytes() == before  # the original run is untouched
    assert run(base + ["--seed", "1", "--no-resume", "--checkpoint", str(tmp_path / "other.pt")]) == 0


KILLED_RUN = textwrap.dedent("""
    import sys, torch
    from metalib import SinusoidTasks, meta_train, mlp
    from metalib.algorithms import maml
    torch.set_num_threads(1)
    learner = maml(mlp((1, 64, 64, 1), seed=0), inner_lr=0.01, problem="regression")
    meta_train(learner, SinusoidTasks(5, seed=0), steps=int(sys.argv[2]), meta_batch=4, checkpoint=sys.argv[1],
               checkpoint_every=1, progress=False)
""")


@pytest.mark.slow
def test_killing_training_during_checkpoint_writes_loses_nothing(tmp_path):
    """kill -9 at random moments once a run is writing checkpoints (one per step, so most kills land in or
    next to a write), five times, resuming each time; the result equals an uninterrupted run bitwise, and
    no temporary file is left."""
    steps, script = 400, tmp_path / "train.py"
    script.write_text(KILLED_RUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "whole.pt"), str(steps)], check=True, env=env)
    path, rng, seen = tmp_path / "killed.pt", torch.Generator().manual_seed(0), []
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, str(script), str(path), str(steps)], env=env)
        start = path.stat().st_mtime_ns if path.exists() else 0
        deadline = time.monotonic() + 120
        while (not path.exists() or path.stat().st_mtime_ns == start) and time.monotonic() < deadline:
            time.sleep(0.01)  # until this process has written a checkpoint
        time.sleep(0.3 * torch.rand((), generator=rng).item())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(load_checkpoint(path)["step"])
    assert seen == sorted(seen) and seen[-1] < steps, f"steps at the kills: {seen}"
    subprocess.run([sys.executable, str(script), str(path), str(steps)], check=True, env=env)
    whole, killed = load_checkpoint(tmp_path / "whole.pt"), load_checkpoint(path)
    assert killed["step"] == whole["step"] == steps
    for k, v in whole["learner"].items():
        assert torch.equal(v, killed["learner"][k]), k
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.pt", "train.py", "whole.pt"]

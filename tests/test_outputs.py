"""Nothing lost: interrupts, concurrent runs, full disks, outputs that collide, converted or foreign checkpoints.

Each test here failed on the code before ``metalib.outputs`` existed (issue "Nothing lost, round two")."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metalib.algorithms import anil, maml, r2d2
from metalib.models import conv4
from metalib.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from metalib.models import mlp
from metalib.outputs import OutputInUseError, OutputLock, OutputWriteError, torch_save_atomic, write_atomic
from metalib.tasks import SinusoidTasks
from metalib.train import TrainingInterrupted, meta_train
from metalib.train_cli import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLI = [sys.executable, "-m", "metalib.train_cli"]
SINE = ["--dataset", "sinusoid", "--shots", "5", "--meta-batch", "4", "--val-tasks", "0", "--eval-tasks", "0",
        "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def fill(disk: Path) -> None:
    """Fill a small filesystem to the last byte."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"x" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)


def sine(seed: int = 0):
    return maml(mlp(seed=seed), inner_lr=0.01, problem="regression")


# ------------------------------------------------------------------------------------------ interrupts

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_saves_the_last_step_and_the_rerun_equals_an_uninterrupted_run(tmp_path, sig):
    """Ctrl-C at step ~16 with --checkpoint-every 1000 used to print a 30-line traceback and keep nothing."""
    argv = SINE + ["--steps", "1000", "--val-every", "7", "--checkpoint-every", "5000"]
    whole = tmp_path / "whole.pt"
    subprocess.run(CLI + argv + ["--checkpoint", str(whole)], check=True, env=ENV, capture_output=True)
    path = tmp_path / "run.pt"
    proc = subprocess.Popen(CLI + argv + ["--checkpoint", str(path)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the first history row (step 7): training is under way
        if line.startswith("step 7:"):
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    step = load_checkpoint(path)["step"]
    assert 7 <= step < 1000
    assert err.strip() == (f"training interrupted ({signal.Signals(sig).name}) at step {step}: saved to {path}; run "
                           f"the same command again to resume")
    subprocess.run(CLI + argv + ["--checkpoint", str(path)], check=True, env=ENV, capture_output=True)
    a, b = load_checkpoint(whole), load_checkpoint(path)
    assert a["step"] == b["step"] == 1000
    for k, v in a["learner"].items():
        assert torch.equal(v, b["learner"][k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if k.startswith(("step", "train_"))} for r in rows]
    assert strip(a["history"]) == strip(b["history"])  # running averages kept across the interrupt


# --------------------------------------------------------------------------------- concurrent runs

def test_two_runs_on_one_checkpoint_the_second_stops_naming_the_first(tmp_path):
    """Two runs started together on one --checkpoint used to both exit 0, the file holding whichever wrote last."""
    path = tmp_path / "run.pt"
    argv = SINE + ["--steps", "1000000", "--checkpoint", str(path), "--checkpoint-every", "1"]
    first = subprocess.Popen(CLI + argv + ["--seed", "0"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + 60
    while not path.exists() and time.monotonic() < deadline:  # it holds the lock once it writes
        time.sleep(0.01)
    second = subprocess.run(CLI + argv + ["--seed", "1"], env=ENV, capture_output=True, text=True)
    first.send_signal(signal.SIGINT)  # the first run stops at its next step, saved
    first.communicate(timeout=120)
    assert first.returncode == 130
    assert second.returncode == 2
    err = second.stderr.strip()
    assert err.startswith(f"error: checkpoint {path} is being written by another run (process {first.pid} on ")
    assert "\n" not in err
    assert load_checkpoint(path)["run_settings"]["seed"] == 0 and not Path(f"{path}.lock").exists()


def test_a_lock_left_by_a_killed_run_is_not_obeyed(tmp_path):
    path = tmp_path / "run.pt"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom metalib.outputs import OutputLock\n"
                               f"OutputLock({str(path)!r}).acquire()\nprint('locked', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(OutputInUseError, match=f"process {holder.pid} on "):
        OutputLock(path).acquire()
    holder.kill()
    holder.wait()
    assert Path(f"{path}.lock").exists()  # the killed holder left its file ...
    meta_train(sine(), SinusoidTasks(5, seed=0), steps=2, meta_batch=2, checkpoint=path, progress=False)  # ... unheeded
    assert load_checkpoint(path)["step"] == 2 and not Path(f"{path}.lock").exists()


# --------------------------------------------------------------------------------- colliding outputs

@pytest.mark.parametrize("csv", ["run.pt", "run.pt.snapshots", "run.pt.snapshots/h.csv", "run.pt.lock"])
def test_two_outputs_at_one_path_are_refused_before_the_first_step(tmp_path, capsys, csv):
    """--history-csv equal to --checkpoint used to overwrite the checkpoint with the CSV (the resume then failed)."""
    code = run(SINE + ["--steps", "2", "--checkpoint", str(tmp_path / "run.pt"), "--history-csv", str(tmp_path / csv),
                       "--snapshot-every", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: the ") and "each output needs its own path" in err and "\n" not in err
    assert not (tmp_path / "run.pt").exists()


def test_a_snapshot_folder_that_is_a_file_is_refused_before_the_first_step(tmp_path, capsys):
    (tmp_path / "run.pt.snapshots").write_text("my notes")
    code = run(SINE + ["--steps", "2", "--checkpoint", str(tmp_path / "run.pt"), "--snapshot-every", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"{tmp_path / 'run.pt.snapshots'} is a file, not a folder" in err
    assert not (tmp_path / "run.pt").exists() and (tmp_path / "run.pt.snapshots").read_text() == "my notes"


def test_a_checkpoint_path_ending_in_a_separator_is_refused(tmp_path, capsys):
    """--checkpoint newdir/ used to be written as a file called newdir."""
    assert run(SINE + ["--steps", "1", "--checkpoint", f"{tmp_path / 'newdir'}/"]) == 2
    assert "names a folder (it ends with '/')" in capsys.readouterr().err
    assert not (tmp_path / "newdir").exists()


# ---------------------------------------------------------------------------------------- full disks

def test_atomic_writes_on_a_real_full_disk_keep_the_previous_file(tiny_disk):
    """torch's writer reported a full disk as '[enforce fail at inline_container.cc:672]'."""
    path = tiny_disk / "run.pt"
    torch_save_atomic(path, {"w": torch.zeros(10)})
    before = path.read_bytes()
    with pytest.raises(OutputWriteError) as err:
        torch_save_atomic(path, {"w": torch.zeros(100_000)})
    assert str(err.value) == (f"cannot write the checkpoint {path}: no space left on device (the previous file is "
                              f"intact); free some space and run the same command again")
    assert path.read_bytes() == before and sorted(p.name for p in tiny_disk.iterdir()) == ["run.pt"]


def test_a_full_disk_while_writing_the_history_csv_keeps_the_old_csv_in_one_line(tmp_path, tiny_disk, capsys):
    csv = tiny_disk / "history.csv"
    csv.write_text("step,train_loss\n1,0.5\n")
    fill(tiny_disk)
    code = run(SINE + ["--steps", "3", "--val-every", "1", "--history-csv", str(csv), "--checkpoint",
                       str(tmp_path / "run.pt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (f"error: cannot write the history CSV {csv}: no space left on device (the previous "
                                 f"file is intact); free some space and run the same command again")
    assert csv.read_text() == "step,train_loss\n1,0.5\n"
    assert load_checkpoint(tmp_path / "run.pt")["step"] == 3  # the run itself is saved


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tiny_disk, capsys):
    path = tiny_disk / "run.pt"
    assert run(SINE + ["--steps", "2", "--checkpoint", str(path)]) == 0
    before = path.read_bytes()
    fill(tiny_disk)
    capsys.readouterr()
    assert run(SINE + ["--steps", "4", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: cannot write the checkpoint {path}: no space left on device (the previous file is "
                   f"intact); free some space and run the same command again")
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 2


def test_every_output_writer_is_atomic(tmp_path, full_disk):
    """CSV, metrics, manifests and checkpoints all go through write_atomic: a failed write leaves the old file."""
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(OutputWriteError, match="no space left on device"):
        write_atomic(path, "new" * 1000, "manifest")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


# ------------------------------------------------------------------------- snapshots and checkpoints

def test_temporaries_a_killed_snapshot_write_left_are_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "run.pt.snapshots"
    folder.mkdir()
    stale, mine = folder / f".step0000001.pt.tmp{dead.pid}-140000", folder / "notes.txt"
    stale.write_bytes(b"partial")
    mine.write_text("mine")
    meta_train(sine(), SinusoidTasks(5, seed=0), steps=2, meta_batch=2, checkpoint=tmp_path / "run.pt",
               snapshot_every=1, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "step0000001.pt", "step0000002.pt"]


def test_a_float16_copy_of_a_checkpoint_is_refused_and_left_alone(tmp_path):
    """Resuming a float16 copy used to load silently (loss 3.7e17) and overwrite the file."""
    path = tmp_path / "run.pt"
    meta_train(sine(), SinusoidTasks(5, seed=0), steps=2, meta_batch=2, checkpoint=path, progress=False)
    state = load_checkpoint(path)
    state["learner"] = {k: v.half() for k, v in state["learner"].items()}
    save_checkpoint(path, state)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"as torch.float16 where this learner \(maml\) has torch.float32"):
        meta_train(sine(), SinusoidTasks(5, seed=0), steps=4, meta_batch=2, checkpoint=path, progress=False)
    assert path.read_bytes() == before


def test_meta_train_refuses_to_resume_another_learners_checkpoint_without_run_settings(tmp_path):
    """From Python, anil(...) resumed maml(...)'s checkpoint silently unless the caller passed run_settings."""
    path = tmp_path / "run.pt"
    meta_train(sine(), SinusoidTasks(5, seed=0), steps=2, meta_batch=2, checkpoint=path, progress=False)
    other = anil(mlp(seed=0), inner_lr=0.01, problem="regression")
    with pytest.raises(CheckpointError, match="belongs to a different run .*algorithm: checkpoint 'maml', now 'anil'"):
        meta_train(other, SinusoidTasks(5, seed=0), steps=4, meta_batch=2, checkpoint=path, progress=False)
    with pytest.raises(CheckpointError, match="inner_lr: checkpoint 0.01, now 0.02"):
        meta_train(maml(mlp(seed=0), inner_lr=0.02, problem="regression"), SinusoidTasks(5, seed=0), steps=4,
                   meta_batch=2, checkpoint=path, progress=False)
    assert load_checkpoint(path)["step"] == 2


class SignalAt:
    """Tasks of ``SinusoidTasks`` that send this process ``sig`` while the tasks of step ``at`` are drawn."""

    def __init__(self, at: int, sig=signal.SIGINT, meta_batch: int = 2):
        self.tasks, self.at, self.sig, self.meta_batch = SinusoidTasks(5, seed=0), at, sig, meta_batch

    def batch(self, indices):
        if indices[0] == self.at * self.meta_batch:
            os.kill(os.getpid(), self.sig)
        return self.tasks.batch(indices)


@pytest.mark.parametrize("at", [3, 5])  # mid-run, and during the last step (which used to be swallowed)
def test_a_signal_from_python_finishes_the_step_saves_it_and_resumes_the_same_run(tmp_path, at):
    whole = meta_train(sine(), SinusoidTasks(5, seed=0), steps=6, meta_batch=2, val_every=4,
                       checkpoint=tmp_path / "whole.pt", progress=False)
    with pytest.raises(TrainingInterrupted, match=f"at step {at + 1}: saved to"):
        meta_train(sine(), SignalAt(at), steps=6, meta_batch=2, val_every=4, checkpoint=tmp_path / "run.pt",
                   progress=False)
    assert load_checkpoint(tmp_path / "run.pt")["step"] == at + 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    again = meta_train(sine(), SinusoidTasks(5, seed=0), steps=6, meta_batch=2, val_every=4,
                       checkpoint=tmp_path / "run.pt", progress=False)
    a, b = load_checkpoint(tmp_path / "whole.pt"), load_checkpoint(tmp_path / "run.pt")
    for k, v in a["learner"].items():
        assert torch.equal(v, b["learner"][k]), k
    cols = [c for c in whole.columns if c.startswith(("step", "train_"))]
    assert whole[cols].equals(again[cols])


def test_a_learner_that_reports_learned_values_resumes(tmp_path):
    """R2D2's describe() reports its learned lambda and scale: compared before the restore, every resume failed."""
    from metalib.tasks import EpisodeSampler

    images = torch.randint(0, 255, (10, 20, 28, 28), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    sampler = EpisodeSampler(images, ways=5, shots=1, queries=2, seed=0)
    make = lambda: r2d2(conv4(0, hidden=8, seed=0))  # noqa: E731
    meta_train(make(), sampler, steps=2, meta_batch=2, checkpoint=tmp_path / "run.pt", progress=False)
    meta_train(make(), sampler, steps=4, meta_batch=2, checkpoint=tmp_path / "run.pt", progress=False)
    assert load_checkpoint(tmp_path / "run.pt")["step"] == 4


def test_a_setting_added_to_describe_since_the_checkpoint_is_not_a_different_run(tmp_path):
    path = tmp_path / "run.pt"
    meta_train(sine(), SinusoidTasks(5, seed=0), steps=2, meta_batch=2, checkpoint=path, progress=False)
    state = load_checkpoint(path)
    del state["settings"]["first_order"]  # as written by code whose describe() did not report it yet
    save_checkpoint(path, state)
    meta_train(sine(), SinusoidTasks(5, seed=0), steps=4, meta_batch=2, checkpoint=path, progress=False)
    assert load_checkpoint(path)["step"] == 4


def test_a_mamlpp_checkpoint_that_says_it_adapts_the_head_resumes(tmp_path):
    """Earlier versions labelled MAML++ as adapting its head (it adapts every weight but the per-step BatchNorm ones);
    their checkpoints are the same run. Any other change of that label is still a different run."""
    from metalib.algorithms import mamlpp
    from metalib.tasks import EpisodeSampler

    images = torch.randint(0, 255, (10, 20, 28, 28), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    sampler = EpisodeSampler(images, ways=5, shots=1, queries=2, seed=0)
    make = lambda: mamlpp(conv4(5, hidden=8, seed=0), steps=1)  # noqa: E731
    path = tmp_path / "run.pt"
    meta_train(make(), sampler, steps=2, meta_batch=2, checkpoint=path, progress=False)
    state = load_checkpoint(path)
    state["settings"]["adapted"] = "head"  # as the earlier label
    save_checkpoint(path, state)
    meta_train(make(), sampler, steps=3, meta_batch=2, checkpoint=path, progress=False)
    assert load_checkpoint(path)["step"] == 3
    state = load_checkpoint(path)
    state["settings"]["adapted"] = "all"
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError, match="adapted: checkpoint 'all', now 'all but the per-step BatchNorm'"):
        meta_train(make(), sampler, steps=4, meta_batch=2, checkpoint=path, progress=False)

"""Distributed meta-training: 2 ranks (torchrun, gloo, CPU) train exactly like 1 process.

Tests marked ``distributed`` launch ``torchrun`` subprocesses (deselect with ``-m "not distributed"``).
This file is also the worker script those launches run: ``torchrun ... tests/test_distributed.py MODE OUT``.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from metalib import REGISTRY
from metalib.algorithms import maml
from metalib.distributed import (DistContext, ShardedExecution, distributed_evaluate, distributed_meta_train,
                                 init_distributed, prepare_once, shutdown_distributed)
from metalib.models import Conv4, mlp
from metalib.tasks import SinusoidTasks
from metalib.train import evaluate, load_checkpoint, meta_train
from launch import show, torchrun
from reference import contract_case

THIS = Path(__file__).resolve()
needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

# ------------------------------------------------------------------ shared by the worker and the tests

STEPS, META_BATCH, VAL_TASKS, EVAL_TASKS = 2, 4, 5, 7  # 5 and 7 tasks split unevenly over 2 ranks


def _images() -> torch.Tensor:
    """Tiny synthetic classification data: 10 classes x 4 drawings of 16x16 uint8 images."""
    g = torch.Generator().manual_seed(0)
    return (torch.rand(10, 4, 16, 16, generator=g) * 255).to(torch.uint8)


def _case(name: str):
    """(learner, train sampler, evaluation sampler) of a registered learner: its contract case (tiny conv4 on 16x16
    images where it classifies, else the sinusoids)."""
    return contract_case(name)


CASES = sorted(REGISTRY)  # every registered learner: a new one is checked here without an edit


@contextmanager
def one_thread():
    """Run with one intra-op thread, like the torchrun workers (OMP_NUM_THREADS=1): the same kernels, and
    no oversubscription of a small, shared CI machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_case(name: str, distributed: bool) -> dict:
    """Train ``STEPS`` steps with validation, then evaluate; returns what the comparison needs."""
    learner, train, test = _case(name)
    optimizer = None  # the default: Adam (SGD for Reptile)
    if isinstance(getattr(learner, "model", None), Conv4):
        # conv biases before BatchNorm have a zero meta-gradient up to rounding noise (~1e-7), and Adam
        # scales that noise to +-lr steps, so any change of summation order (e.g. sharding) moves these
        # (functionally inert) biases by ~1e-3; SGD keeps the comparison at rounding level
        optimizer = torch.optim.SGD(learner.meta_parameters().values(), lr=0.1)
    kw = dict(steps=STEPS, meta_batch=META_BATCH, optimizer=optimizer, val_sampler=test, val_every=STEPS,
              val_tasks=VAL_TASKS, progress=False)
    history = distributed_meta_train(learner, train, **kw) if distributed else meta_train(learner, train, **kw)
    ev = (distributed_evaluate if distributed else evaluate)(learner, test, n_tasks=EVAL_TASKS)
    return {"state": {k: v.detach().clone() for k, v in learner.state_dict().items()},
            "history": history.drop(columns=["time_s", "cpu_s"]).to_dict("list"),
            "eval": {"mean": ev.mean, "ci95": ev.ci95, "n_tasks": ev.n_tasks, "scores": ev.scores}}


def _prepared(out: Path, ctx: DistContext) -> int:
    """prepare_once's contract: rank 0 runs first, the others only once it has finished."""
    marker = out / "prepared.txt"

    def prepare() -> int:
        if ctx.is_main:
            time.sleep(0.5)  # a slow cache build: the other rank must wait for it
            marker.write_text("built by rank 0")
        return len(marker.read_text())  # FileNotFoundError on rank 1 if it did not wait

    return prepare_once(prepare, ctx)


@record
def worker(mode: str, out: Path) -> None:
    """Body of each torchrun process."""
    if mode == "equivalence":
        ctx = init_distributed(timeout=60)
        try:
            _prepared(out, ctx)
            results = {name: run_case(name, distributed=True) for name in CASES}
            # ranks disagree about the time budget: all must still stop at the same step (no hang)
            learner, train, _ = _case("anil")
            history = distributed_meta_train(learner, train, steps=5, meta_batch=META_BATCH, progress=False,
                                             time_budget=0.0 if ctx.is_main else 1e9)
            results["time_budget_stop"] = int(history["step"].iloc[-1])
            torch.save(results, out / f"rank{ctx.rank}.pt")
        finally:
            shutdown_distributed()
    elif mode in ("raise", "stall"):
        # raise: rank 1 raises at step 1 (the job must stop long before the 300 s timeout);
        # stall: rank 1 hangs at step 1 (rank 0 must fail after the 10 s process-group timeout).
        ctx = init_distributed(timeout=300 if mode == "raise" else 10)
        tasks = SinusoidTasks(shots=5, seed=0)

        class Faulty:
            def batch(self, indices):
                if ctx.rank == 1 and indices[0] >= META_BATCH:  # step 1
                    if mode == "raise":
                        raise RuntimeError("rank 1 failed on purpose at step 1")
                    time.sleep(300)
                return tasks.batch(indices)

        learner = maml(mlp((1, 8, 1), seed=0), inner_lr=0.01, problem="regression")
        distributed_meta_train(learner, Faulty(), steps=4, meta_batch=META_BATCH, progress=False)
        shutdown_distributed()
    else:
        raise ValueError(f"unknown worker mode {mode!r}")


# ------------------------------------------------------------------------------------ launching


# ----------------------------------------------------------------------------- unit tests (fast)


def _rank(r: int, world: int) -> ShardedExecution:
    return ShardedExecution(DistContext(rank=r, world_size=world), meta_batch=8)


def test_sharded_tasks_split_each_step_into_contiguous_equal_shares():
    shards = [_rank(r, 4) for r in range(4)]
    assert [s.train_tasks(3, 8) for s in shards] == [[24, 25], [26, 27], [28, 29], [30, 31]]
    assert sum((s.train_tasks(0, 8) for s in shards), []) == list(range(8))
    assert _rank(0, 1).train_tasks(2, 8) == list(range(16, 24))  # one process: the whole meta-batch
    # evaluation shares may be unequal but cover range(n) in rank order
    assert [_rank(r, 4).eval_tasks(10) for r in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert [_rank(r, 4).eval_tasks(2) for r in range(4)] == [[0], [1], [], []]


def test_meta_batch_must_be_divisible_by_the_world_size():
    with pytest.raises(ValueError, match=r"meta-batch 6 is not divisible by the 4 ranks.*e\.g\. 4 or 8"):
        ShardedExecution(DistContext(rank=0, world_size=4), meta_batch=6)


def test_single_process_fallback_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main, ctx.is_distributed) == (0, 1, None, True, False)
    assert not dist.is_initialized()
    grads, metrics = {"w": torch.ones(2)}, {"loss": 1.5}
    execution = ShardedExecution(ctx)
    assert execution.reduce(grads, metrics) == (grads, metrics) and execution.agree(True) and not execution.agree(False)
    assert prepare_once(lambda: 7, ctx) == 7
    with pytest.raises(ValueError, match="timeout must be positive"):
        init_distributed(timeout=0)
    with pytest.raises(ValueError, match="backend must be"):
        init_distributed("mpi")


@pytest.mark.usefixtures("one_torch_thread")
def test_distributed_functions_without_a_process_group_are_the_plain_ones():
    learner, train, test = _case("anil")
    reference, _, _ = _case("anil")
    distributed_meta_train(learner, train, steps=2, meta_batch=META_BATCH, progress=False)
    meta_train(reference, train, steps=2, meta_batch=META_BATCH, progress=False)
    for (k, a), b in zip(learner.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), k
    assert distributed_evaluate(learner, test, n_tasks=5).mean == evaluate(learner, test, n_tasks=5).mean


# ------------------------------------------------------------------------ torchrun launches (slow)



@pytest.mark.parametrize("name", CASES)
@pytest.mark.distributed
@pytest.mark.filterwarnings("ignore:iMAML")  # two steps from an untrained start: iMAML says its assumptions fail
@needs_gloo
def test_two_ranks_update_like_one_process(two_rank_results, name):
    two = two_rank_results[name]
    with one_thread():
        one = run_case(name, distributed=False)
    diff = max((two["state"][k] - v).abs().max().item() for k, v in one["state"].items())
    print(f"\n{name}: max |2-rank - 1-process| meta-parameter difference after {STEPS} steps = {diff:.3g}")
    assert one["state"].keys() == two["state"].keys()
    assert diff < 1e-5
    trained = _case(name)[0].state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in one["state"].items())  # training moved something
    for col, values in one["history"].items():  # averaged metrics, validation mean and interval
        assert two["history"][col] == pytest.approx(values, rel=1e-4, abs=1e-6), col
    assert two["eval"]["n_tasks"] == one["eval"]["n_tasks"] == EVAL_TASKS
    torch.testing.assert_close(two["eval"]["scores"], one["eval"]["scores"], rtol=1e-4, atol=1e-6)
    assert two["eval"]["ci95"] == pytest.approx(one["eval"]["ci95"], rel=1e-4, abs=1e-7)


CLI = ["-m", "metalib.train_cli", "--dataset", "sinusoid", "--algorithm", "maml", "--shots", "5",
       "--meta-batch", "4", "--val-every", "2", "--val-tasks", "5", "--eval-tasks", "6", "--no-progress"]


@pytest.mark.distributed
@needs_gloo
def test_cli_resume_with_a_different_number_of_processes(tmp_path, monkeypatch, capsys):
    from metalib.train_cli import run

    run_ck, ref_ck = tmp_path / "run.pt", tmp_path / "ref.pt"
    proc, seconds = torchrun([*CLI, "--steps", "2", "--checkpoint", str(run_ck)])
    assert proc.returncode == 0, show(proc)
    assert "2 process(es), backend=gloo" in proc.stdout and "95% CI, 6 tasks" in proc.stdout
    assert load_checkpoint(run_ck)["step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]  # rank 0 wrote it atomically, nobody else

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with one_thread():
        assert run([*CLI[2:], "--steps", "4", "--checkpoint", str(run_ck)]) == 0  # resume: 1 process
        assert "1 process(es)" in capsys.readouterr().out
        assert run([*CLI[2:], "--steps", "4", "--checkpoint", str(ref_ck)]) == 0  # 1 process from scratch
    resumed, reference = load_checkpoint(run_ck), load_checkpoint(ref_ck)
    assert resumed["step"] == reference["step"] == 4
    diff = max((resumed["learner"][k] - v).abs().max().item() for k, v in reference["learner"].items())
    print(f"\n2-rank CLI run: {seconds:.1f} s; resumed (2 ranks, then 1 process) vs 1 process: "
          f"max |difference| = {diff:.3g}")
    assert diff < 1e-5
    assert [r["step"] for r in resumed["history"]] == [r["step"] for r in reference["history"]] == [2, 4]
    for a, b in zip(resumed["history"], reference["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_mse"] == pytest.approx(b["val_mse"], rel=1e-4)


def _failed_job(mode: str, tmp_path) -> tuple[str, float]:
    """Run a 2-rank job in which rank 1 misbehaves (``mode``); return torchrun's "Root Cause" section
    (where ``@record`` puts the failing rank's error) and the seconds the job took to come down."""
    proc, seconds = torchrun([str(THIS), mode, str(tmp_path)], timeout=240)
    output = proc.stdout + proc.stderr
    print(f"\njob with a {mode!r} rank came down in {seconds:.1f} s")
    assert proc.returncode != 0, show(proc)
    assert "Root Cause" in output, show(proc)
    return output.split("Root Cause", 1)[1], seconds


@pytest.mark.distributed
@needs_gloo
def test_a_rank_that_raises_brings_the_job_down_with_its_error(tmp_path):
    cause, seconds = _failed_job("raise", tmp_path)
    assert "rank 1 failed on purpose at step 1" in cause
    assert seconds < 150  # rank 0 was stopped by torchrun, not by its 300 s process-group timeout


@pytest.mark.distributed
@needs_gloo
def test_a_stuck_rank_fails_the_job_after_the_process_group_timeout(tmp_path):
    cause, seconds = _failed_job("stall", tmp_path)
    assert "timed out" in cause.lower()
    assert seconds < 150  # the stuck rank sleeps 300 s: rank 0's 10 s timeout ended the job


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(f"usage: torchrun --nproc-per-node 2 {sys.argv[0]} equivalence|raise|stall OUT_DIR")
    worker(sys.argv[1], Path(sys.argv[2]))

"""Test-time embedding on a CPU: one pass of grouped convolutions over a batch of tasks against each task's plain
convolutions in turn (what `embed_episode` does at test time since issue 30's change), for conv4-64 on Omniglot-
sized tasks, no autograd. Prints seconds per batch of 32 tasks (median of interleaved rounds) and the ratio, with
1 and 2 torch threads.

    python benchmarks/evaluation.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from metalib import TaskBatch, conv4
from metalib.algorithms.base import embed_episode
from metalib.inner import forward_adapted
from metalib.profiling import cpu_name


def _grouped(model, params, x):
    """The pass `embed_episode` took at test time before issue 30's change (and still takes in training)."""
    return forward_adapted(model, params, x)


def _per_task(model, params, x):
    """`embed_episode` itself, as every embedding learner calls it at test time (one support image per task here)."""
    batch = TaskBatch(x[:, :1], torch.zeros(len(x), 1, dtype=torch.long), x[:, 1:],
                      torch.zeros(len(x), x.shape[1] - 1, dtype=torch.long))
    zs, zq, _ = embed_episode(model, batch, params)
    return torch.cat([zs, zq], dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=32)
    a = ap.parse_args()
    print(f"{cpu_name()}, torch {torch.__version__}, load average {os.getloadavg()[0]:.2f} before")
    model = conv4(0, hidden=64, seed=0)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    print("| images per task (column) | threads | grouped s | per task s | per task / grouped | max abs difference |")
    print("|---|---|---|---|---|---|")
    for images, column in ((80, "5w1s, 15 queries"), (400, "20w5s, 15 queries")):
        x = torch.rand(a.tasks, images, 1, 28, 28, generator=g)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            times = {"grouped": [], "per task": []}
            with torch.no_grad():
                out = {name: fn(model, params, x) for name, fn in (("grouped", _grouped), ("per task", _per_task))}
                for _ in range(a.rounds):
                    for name, fn in (("grouped", _grouped), ("per task", _per_task)):
                        start = time.perf_counter()
                        fn(model, params, x)
                        times[name].append(time.perf_counter() - start)
            g_s, p_s = statistics.median(times["grouped"]), statistics.median(times["per task"])
            diff = (out["grouped"] - out["per task"]).abs().max().item()
            print(f"| {images} ({column}) | {threads} | {g_s:.3f} | {p_s:.3f} | {p_s / g_s:.2f} | {diff:.1e} |")
    print(f"load average {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()

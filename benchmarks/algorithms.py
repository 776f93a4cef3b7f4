"""Meta-step time and autograd-graph memory of every learner in metalib, next to MAML's, on one workload.

Workload: Omniglot-sized 5-way 1-shot episodes (28x28 synthetic images, 15 queries per class), conv4 with 64
channels, meta-batch 32 (``--meta-batch``), each learner on the engine ``auto`` picks for the device. Timing is
interleaved: every round times one meta-step of every learner in turn, and the table reports the median over
rounds, so a slow spell of a shared machine hits all alike. Memory is the peak of the tensors autograd saves
during one meta-step, measured with one thread (``metalib.profiling.measure``; on CUDA, the allocator's peak);
MAML-family learners on the CPU engines free each task's graph as soon as its gradient is known, so their figure
is about one task's graph, where ProtoNets, R2D2 and iMAML's Hessian-vector products hold the whole meta-batch's.

    .venv/bin/python benchmarks/algorithms.py                    # CPU (~5 min on 2 cores)
    .venv/bin/python benchmarks/algorithms.py --device cuda

Prints a markdown table with each learner's time and memory as ratios to first-order-free MAML with one step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from metalib import EpisodeSampler, conv4, resolve_device  # noqa: E402
from metalib.algorithms import (anil, attention_learner, fomaml, imaml, maml, mamlpp, metasgd, protomaml,  # noqa: E402
                                protonet, r2d2, reptile)
from metalib.profiling import cpu_name, interleaved_times, measure  # noqa: E402

LEARNERS = {
    "MAML, 1 step": lambda m: maml(m(5), steps=1),
    "first-order MAML, 1 step": lambda m: fomaml(m(5), steps=1),
    "MAML, 5 steps": lambda m: maml(m(5), steps=5, inner_lr=0.1),
    "Meta-SGD, 1 step": lambda m: metasgd(m(5), steps=1),
    "ANIL, 1 step": lambda m: anil(m(5), steps=1),
    "Proto-MAML, 1 step": lambda m: protomaml(m(5), steps=1),
    "MAML++, 5 steps": lambda m: mamlpp(m(5), steps=5),
    "MAML++, 5 steps, multi-step loss": lambda m: mamlpp(m(5), steps=5, msl_steps=10 ** 9),
    "iMAML, 5 steps + 5 CG": lambda m: imaml(m(5), steps=5, cg_steps=5),
    "Reptile, 5 steps": lambda m: reptile(m(5), steps=5),
    "ProtoNet": lambda m: protonet(m(0)),
    "R2D2": lambda m: r2d2(m(0)),
    "attention (black-box)": lambda m: attention_learner(m(0), ways=5),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (median reported)")
    p.add_argument("--only", nargs="+", default=None, choices=list(LEARNERS), metavar="LEARNER")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 20, 28, 28, generator=g) * 255).to(torch.uint8)
    batch = EpisodeSampler(images, ways=5, shots=1, queries=15, seed=0, device=device).batch(range(a.meta_batch))
    names = a.only or list(LEARNERS)
    learners = {n: LEARNERS[n](lambda classes: conv4(classes, seed=0, device=device)).to(device) for n in names}
    steps = {n: (lambda learner=learner: learner.meta_gradient(batch)) for n, learner in learners.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the graph hooks are thread-local: one thread, so the threads engine's tasks are seen
    memory = {n: measure(fn, device)[1].graph_mib for n, fn in steps.items()}  # also the warm-up
    torch.set_num_threads(threads)
    times = interleaved_times(steps, a.repeats, device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"
    print(f"{where}; torch {torch.__version__}; meta-batch {a.meta_batch}, 5-way 1-shot, 15 queries, conv4-64; "
          f"median of {a.repeats} interleaved rounds; load average {load:.2f} at the end\n")
    base = "MAML, 1 step" if "MAML, 1 step" in names else names[0]
    ref_t, ref_m = statistics.median(times[base]), memory[base]
    print(f"| learner | s / meta-step | x {base} | graph MiB | x {base} |\n|---|---|---|---|---|")
    for n in names:
        t = statistics.median(times[n])
        print(f"| {n} | {t:.3f} | {t / ref_t:.2f} | {memory[n]:.1f} | {memory[n] / ref_m:.2f} |")


if __name__ == "__main__":
    main()

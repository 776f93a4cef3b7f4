"""How far the meta-step is from the machine's arithmetic limit: FLOPs per meta-step, achieved GFLOP/s, and the
GFLOP/s of a large sgemm and a large convolution measured in the same run.

FLOPs are counted by torch's FLOP counter (``torch.utils.flop_counter.FlopCounterMode``: matrix products and
convolutions, forward, backward and double backward) on the ``loop`` engine, because the counter is a dispatch mode
that sees only the thread it runs in and the CPU engine (``threads``) computes in worker threads; every engine does
the same arithmetic (the tests check their meta-gradients against each other). Time is the median of interleaved
rounds on the engine ``auto`` picks. The reference rates are the best of the same rounds for one 2048 x 2048 x 2048
sgemm and for a 3x3 convolution of 64 -> 64 channels on 256 images of 28 x 28 (conv4's widest layer), with the
same torch threads.

    .venv/bin/python benchmarks/flops.py                 # CPU, about two minutes on 2 cores
    .venv/bin/python benchmarks/flops.py --device cuda

Prints one markdown table; run it on an idle machine (the load average is printed with it).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from metalib import EpisodeSampler, conv4, resolve_device  # noqa: E402
from metalib.algorithms import fomaml, maml, protonet  # noqa: E402
from metalib.profiling import cpu_name  # noqa: E402

# (name, learner factory taking a strategy, ways, shots, queries, meta-batch): the recipes' training workloads
WORKLOADS = [
    ("MAML 5w1s, 1 step, 2nd order (recipe)", lambda s: maml(conv4(5, seed=0), steps=1, strategy=s), 5, 1, 5, 32),
    ("MAML 5w1s, 5 steps, 2nd order", lambda s: maml(conv4(5, seed=0), steps=5, inner_lr=0.1, strategy=s), 5, 1, 5, 32),
    ("first-order MAML 5w1s, 5 steps", lambda s: fomaml(conv4(5, seed=0), steps=5, inner_lr=0.1, strategy=s), 5, 1, 5, 32),
    ("ProtoNet 60-way 1-shot episode (recipe)", lambda s: protonet(conv4(0, seed=0)), 60, 1, 5, 1),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (median; best for references)")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(256, 20, 28, 28, generator=g) * 255).to(torch.uint8)

    steps, flops = {}, {}
    for name, make, ways, shots, queries, meta_batch in WORKLOADS:
        batch = EpisodeSampler(images, ways=ways, shots=shots, queries=queries, seed=0, device=device).batch(
            range(meta_batch))
        with FlopCounterMode(display=False) as counter:
            make("loop").to(device).meta_gradient(batch)
        flops[name] = counter.get_total_flops()
        learner = make("auto").to(device)
        learner.meta_gradient(batch)  # warm-up
        steps[name] = lambda lr=learner, b=batch: lr.meta_gradient(b)

    n = 2048
    x, y = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    imgs, w = torch.randn(256, 64, 28, 28, device=device), torch.randn(64, 64, 3, 3, device=device)
    if device.type == "cpu":
        imgs = imgs.contiguous(memory_format=torch.channels_last)  # as the CPU engine runs its convolutions
    references = {"sgemm 2048^3": (lambda: x @ y, 2 * n ** 3),
                  "conv 3x3 64->64, 256 x 28x28": (lambda: F.conv2d(imgs, w, padding=1), 2 * 256 * 64 * 64 * 9 * 28 * 28)}
    for fn, _ in references.values():
        fn()  # warm-up

    times: dict[str, list[float]] = {k: [] for k in [*steps, *references]}
    for _ in range(a.repeats):  # interleaved, so a slow spell of a shared machine hits every row alike
        for name, fn in steps.items():
            times[name].append(_timed(fn, device))
        for name, (fn, _) in references.items():
            times[name].append(_timed(fn, device))

    best_ref = max(work / min(times[name]) for name, (_, work) in references.items())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"\n{where}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, load average before "
          f"{load:.2f}, {a.repeats} interleaved rounds\n")
    print("| workload | GFLOP per step | s per step (median) | achieved GFLOP/s | x best reference |")
    print("|---|---|---|---|---|")
    for name in steps:
        sec = statistics.median(times[name])
        rate = flops[name] / sec / 1e9
        print(f"| {name} | {flops[name] / 1e9:.2f} | {sec:.3f} | {rate:.1f} | {rate / (best_ref / 1e9):.2f} |")
    for name, (_, work) in references.items():
        sec = min(times[name])
        print(f"| {name} (reference, best round) | {work / 1e9:.2f} | {sec:.3f} | {work / sec / 1e9:.1f} | "
              f"{work / sec / best_ref:.2f} |")


if __name__ == "__main__":
    main()

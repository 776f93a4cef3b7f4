"""Meta-step time and autograd-graph memory of MAML and ProtoNets with ResNet-12 against conv4, at mini-ImageNet's size.

Workload: 5-way 1-shot episodes of 84x84 RGB images (synthetic) with 15 queries per class; MAML with one inner
step (second order) at meta-batch 4 (Finn et al.'s mini-ImageNet meta-batch), ProtoNets with one 5-way episode
per step (``--proto-batch``); conv4 with 32 channels for MAML (Finn et al.) and 64 for ProtoNets (Snell et al.),
ResNet-12 with 64-160-320-640. Timing is interleaved (each round times one meta-step of every configuration in
turn; the median over rounds is reported); memory is the peak of the tensors autograd saves during one meta-step,
with one thread (``metalib.profiling.measure``; on CUDA, the allocator's peak).

    .venv/bin/python benchmarks/backbones.py                  # CPU (a few minutes on 2 cores)
    .venv/bin/python benchmarks/backbones.py --device cuda

Prints a markdown table with the ratios of ResNet-12 to conv4 for each learner.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from metalib import EpisodeSampler, resolve_device  # noqa: E402
from metalib.algorithms import maml, protonet  # noqa: E402
from metalib.models import conv4, resnet12  # noqa: E402
from metalib.profiling import cpu_name, interleaved_times, measure  # noqa: E402

CONFIGS = {
    ("MAML, 1 step", "conv4-32"): lambda dev: maml(conv4(5, in_channels=3, hidden=32, image_size=84, seed=0,
                                                          device=dev), inner_lr=0.01, steps=1),
    ("MAML, 1 step", "ResNet-12"): lambda dev: maml(resnet12(5, seed=0, device=dev), inner_lr=0.01, steps=1),
    ("ProtoNet", "conv4-64"): lambda dev: protonet(conv4(0, in_channels=3, hidden=64, image_size=84, seed=0,
                                                         device=dev)),
    ("ProtoNet", "ResNet-12"): lambda dev: protonet(resnet12(0, seed=0, device=dev)),
}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--maml-batch", type=int, default=4)
    p.add_argument("--proto-batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds (median reported)")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(10, 20, 3, 84, 84, generator=g) * 255).to(torch.uint8)
    sampler = EpisodeSampler(images, ways=5, shots=1, queries=15, seed=0, device=device)
    batches = {"MAML, 1 step": sampler.batch(range(a.maml_batch)), "ProtoNet": sampler.batch(range(a.proto_batch))}
    learners = {key: make(device) for key, make in CONFIGS.items()}
    steps = {key: (lambda learner=learner, b=batches[key[0]]: learner.meta_gradient(b)) for key, learner in learners.items()}
    params = {key: sum(p.numel() for p in learner.parameters()) for key, learner in learners.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the graph hooks are thread-local: one thread, so the threads engine's tasks are seen
    memory = {key: measure(fn, device)[1].graph_mib for key, fn in steps.items()}  # also the warm-up
    torch.set_num_threads(threads)
    times = interleaved_times(steps, a.repeats, device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {threads} threads"
    print(f"{where}; torch {torch.__version__}; 5-way 1-shot, 15 queries per class, 84x84x3; MAML meta-batch "
          f"{a.maml_batch}, ProtoNet {a.proto_batch} episode(s) per step; median of {a.repeats} interleaved rounds; "
          f"load average {load:.2f} at the end\n")
    print("| learner | backbone | weights | s / meta-step | x conv4 | graph MiB | x conv4 |\n|---|---|---|---|---|---|---|")
    for (learner, net), fn in steps.items():
        base = next(k for k in steps if k[0] == learner and k[1].startswith("conv4"))
        t, t0 = statistics.median(times[(learner, net)]), statistics.median(times[base])
        m, m0 = memory[(learner, net)], memory[base]
        print(f"| {learner} | {net} | {params[(learner, net)] / 1e6:.2f} M | {t:.3f} | {t / t0:.1f} | {m:.0f} | "
              f"{m / m0:.1f} |")


if __name__ == "__main__":
    main()

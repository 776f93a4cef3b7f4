"""Meta-training throughput and memory of metalib's inner-loop core against a naive loop and peers.

Workload (MAML-era Omniglot): 5-way 1-shot, 15 queries per class, 28x28 images, conv4 (64 channels,
BatchNorm), meta-batch 32; second-order MAML with 1 and 5 inner steps (inner lr 0.4) and first-order
MAML with 1 step. Variants: metalib (``auto``: ``threads`` on CPU, ``batched`` on GPU), metalib's
other strategies (``loop``, ``batched``; ``vmap`` on GPU), a naive per-task loop in plain PyTorch, and
the peers that import (learn2learn, higher, TorchOpt; see ``install_peers.sh``). Before timing, every
variant's meta-gradient is compared in float64 with the naive loop's from the same weights and data.

Timing runs every variant in this one process, interleaved: each round times one meta-step of every
variant in turn and the table reports the median over rounds, so a slow spell of a shared machine
hits all variants alike (on this 2-core VM single timings drift by +-20%). Peak memory is measured
separately, each (variant, workload) in its own subprocess so that the peak is its own
(CPU: peak RSS increase; CUDA: ``torch.cuda.max_memory_allocated``).

    .peers-venv/bin/python benchmarks/inner_loop.py                 # CPU, all workloads (~15 min, 2 cores)
    .peers-venv/bin/python benchmarks/inner_loop.py --device cuda   # on a GPU machine
    .venv/bin/python benchmarks/inner_loop.py                       # without peers: metalib vs naive

Prints a markdown table (ratios to the fastest peer and to the naive loop) and writes JSON to
``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import PEER_ERRORS, PEER_VERSIONS, PEERS, meta_gradient_naive  # noqa: E402

from metalib import EpisodeSampler, conv4, resolve_device  # noqa: E402
from metalib.algorithms import maml  # noqa: E402
from metalib.inner import resolve_strategy  # noqa: E402
from metalib.profiling import cpu_name  # noqa: E402

WORKLOADS = {"2nd-order, 1 step": (1, False), "2nd-order, 5 steps": (5, False), "1st-order, 1 step": (1, True)}
PEER_NAMES = ("learn2learn", "higher", "torchopt")


def make_batch(meta_batch: int, device: torch.device, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 20, 28, 28, generator=g) * 255).to(torch.uint8)
    b = EpisodeSampler(images, ways=5, shots=1, queries=15, seed=0, device=device).batch(range(meta_batch))
    return b.to(dtype=dtype)


def variant_fn(name: str, model, batch, steps: int, first_order: bool):
    """A zero-argument callable computing one meta-gradient with variant ``name``."""
    if name.startswith("metalib"):
        strategy = {"metalib": "auto", "metalib-vmap": "vmap", "metalib-loop": "loop",
                    "metalib-batched": "batched", "metalib-threads": "threads"}[name]
        learner = maml(model, inner_lr=0.4, steps=steps, first_order=first_order, strategy=strategy)
        return lambda: learner.meta_gradient(batch)[0]
    fn = meta_gradient_naive if name == "naive" else PEERS[name]
    return lambda: fn(model, batch.support_x, batch.support_y, batch.query_x, batch.query_y,
                      inner_lr=0.4, steps=steps, first_order=first_order)


def check_agreement(variants: list[str], device: torch.device) -> dict[str, float]:
    """Max |meta-gradient - naive| in float64, per variant and workload (2 tasks, a 16-channel conv4 to keep
    float64 convolutions affordable on a CPU)."""
    model = conv4(5, hidden=16, seed=0).double().to(device)
    batch = make_batch(2, device, torch.float64)
    out = {}
    for wl, (steps, fo) in WORKLOADS.items():
        ref = list(variant_fn("naive", model, batch, steps, fo)().values())
        for v in variants:
            got = list(variant_fn(v, model, batch, steps, fo)().values())
            out[f"{v} | {wl}"] = max((a - b).abs().max().item() for a, b in zip(got, ref))
    return out


def time_workload(variants: list[str], workload: str, args) -> dict[str, list[float]]:
    """Seconds per meta-step of every variant, ``args.repeats`` interleaved rounds after a warm-up."""
    device = resolve_device(args.device)
    steps, fo = WORKLOADS[workload]
    model = conv4(5, seed=0, device=device)
    batch = make_batch(args.meta_batch, device)
    fns = {v: variant_fn(v, model, batch, steps, fo) for v in variants}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync()
            times[v].append(time.perf_counter() - start)
    return times


def child_memory(variant: str, workload: str, args) -> float:
    """Peak memory (MB) of one meta-step of ``variant``, measured in this fresh process."""
    device = resolve_device(args.device)
    steps, fo = WORKLOADS[workload]
    model = conv4(5, seed=0, device=device)
    batch = make_batch(args.meta_batch, device)
    fn = variant_fn(variant, model, batch, steps, fo)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    base = _reset_peak_rss()
    fn()
    return _peak_rss() - base


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _reset_peak_rss() -> float:
    """Reset the peak-RSS mark to the current RSS (Linux); returns it in MB. Not ``ru_maxrss``: a child
    process inherits its parent's peak through fork and exec, which hid every child's own peak."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _peak_rss() -> float:
    return _status_mb("VmHWM")


def peak_memory(variant: str, workload: str, args) -> float | None:
    cmd = [sys.executable, __file__, "--child", variant, workload, "--device", args.device, "--meta-batch",
           str(args.meta_batch)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("MEMORY ")]
    if res.returncode or not line:
        print(f"  memory of {variant} / {workload} failed:\n{res.stderr[-2000:]}")
        return None
    return float(line[0].split()[1])


def largest_meta_batch(steps: int, device: torch.device, limit: int = 4096) -> int:
    """Largest power-of-two meta-batch whose second-order meta-step fits in GPU memory."""
    model = conv4(5, seed=0, device=device)
    best, b = 0, 32
    while b <= limit:
        try:
            maml(model, inner_lr=0.4, steps=steps).meta_gradient(make_batch(b, device))
            torch.cuda.synchronize()
            best, b = b, b * 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--variants", nargs="+", default=None, help="default: metalib, naive and every peer that imports")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (median reported)")
    p.add_argument("--out", type=Path, default=Path("output/benchmarks"))
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "WORKLOAD"), help=argparse.SUPPRESS)
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory subprocesses")
    args = p.parse_args()
    if args.child:
        print(f"MEMORY {child_memory(*args.child, args)}", flush=True)
        return

    device = resolve_device(args.device)
    default = ["metalib", "metalib-loop", "metalib-batched", "naive", *PEERS]
    variants = args.variants or default + (["metalib-vmap"] if device.type == "cuda" else [])
    auto = resolve_strategy("auto", device, conv4(5))
    name = (torch.cuda.get_device_name() if device.type == "cuda"
            else f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    print(f"device: {name}; torch {torch.__version__}; metalib auto strategy: {auto}; meta-batch {args.meta_batch}; "
          f"peers: {sorted(PEERS)}; not loaded: {PEER_ERRORS or 'none'}")
    agreement = check_agreement(variants, device)
    for k, v in agreement.items():
        print(f"  agreement {k}: max |g - g_naive| = {v:.1e}")
        if v > 1e-8:
            raise SystemExit(f"{k} disagrees with the naive loop ({v:.2e}); not timing it")

    rows = []
    for wl in args.workloads:
        times = time_workload(variants, wl, args)
        for v in variants:
            sec = statistics.median(times[v])
            mem = None if args.no_memory else peak_memory(v, wl, args)
            rows.append({"variant": v, "workload": wl, "s_per_step": sec, "tasks_per_s": args.meta_batch / sec,
                         "s_min": min(times[v]), "s_max": max(times[v]), "peak_mem_mb": mem})
            r = rows[-1]
            print(f"  {wl:20s} {v:16s} {sec:8.3f} s/step ({r['s_min']:.3f}-{r['s_max']:.3f}) "
                  f"{r['tasks_per_s']:8.1f} tasks/s {'-' if mem is None else f'{mem:.0f}':>8s} MB", flush=True)

    for wl in args.workloads:
        wl_rows = [r for r in rows if r["workload"] == wl]
        peers = [r["tasks_per_s"] for r in wl_rows if r["variant"] in PEER_NAMES]
        naive = [r["tasks_per_s"] for r in wl_rows if r["variant"] == "naive"]
        for r in wl_rows:
            r["x_fastest_peer"] = r["tasks_per_s"] / max(peers) if peers else None
            r["x_naive"] = r["tasks_per_s"] / naive[0] if naive else None
    print(f"\n{name}, meta-batch {args.meta_batch}, median of {args.repeats} interleaved rounds\n")
    print("| workload | variant | s / meta-step (min-max) | tasks/s | x fastest peer | x naive | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        xp = f"{r['x_fastest_peer']:.2f}" if r["x_fastest_peer"] else "-"
        xn = f"{r['x_naive']:.2f}" if r["x_naive"] else "-"
        mem = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
        print(f"| {r['workload']} | {r['variant']} | {r['s_per_step']:.3f} ({r['s_min']:.3f}-{r['s_max']:.3f}) "
              f"| {r['tasks_per_s']:.1f} | {xp} | {xn} | {mem} |")
    result = {"device": name, "meta_batch": args.meta_batch, "torch": torch.__version__, "repeats": args.repeats,
              "auto_strategy": auto, "rows": rows, "agreement": agreement, "peer_errors": PEER_ERRORS,
              "peer_versions": PEER_VERSIONS}
    if device.type == "cuda":
        result["largest_meta_batch"] = {f"{s} steps": largest_meta_batch(s, device) for s in (1, 5)}
        print("largest second-order meta-batch that fits:", result["largest_meta_batch"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"inner_loop_{device.type}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

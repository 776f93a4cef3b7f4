"""Meta-training throughput and memory of metalib's inner-loop core against a naive loop and peers.

Workload (MAML-era Omniglot): 5-way 1-shot, 15 queries per class, 28x28 images, conv4 (64 channels,
BatchNorm), meta-batch 32; second-order MAML with 1 and 5 inner steps (inner lr 0.4) and first-order
MAML with 1 step. Variants: metalib (``auto`` -> task-batched grouped convolutions), metalib ``vmap``
and ``loop`` strategies, a naive per-task loop in plain PyTorch, and the peers that import
(learn2learn, higher, TorchOpt; see ``install_peers.sh``). Before timing, every variant's
meta-gradient is compared in float64 with the naive loop's from the same weights and data.

Each (variant, workload) runs in its own subprocess so that its peak memory is its own
(CPU: peak RSS increase; CUDA: ``torch.cuda.max_memory_allocated``).

    .peers-venv/bin/python benchmarks/inner_loop.py                 # CPU, all workloads
    .peers-venv/bin/python benchmarks/inner_loop.py --device cuda   # on a GPU machine
    .venv/bin/python benchmarks/inner_loop.py                       # without peers: metalib vs naive

Prints a markdown table (ratios to the fastest peer and to the naive loop) and writes JSON to
``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import PEER_ERRORS, PEERS, meta_gradient_naive  # noqa: E402

from metalib import EpisodeSampler, conv4, maml, resolve_device  # noqa: E402

WORKLOADS = {"2nd-order, 1 step": (1, False), "2nd-order, 5 steps": (5, False), "1st-order, 1 step": (1, True)}
PEER_NAMES = ("learn2learn", "higher", "torchopt")


def make_batch(meta_batch: int, device: torch.device, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 20, 28, 28, generator=g) * 255).to(torch.uint8)
    b = EpisodeSampler(images, ways=5, shots=1, queries=15, seed=0, device=device).batch(range(meta_batch))
    return type(b)(b.support_x.to(dtype), b.support_y, b.query_x.to(dtype), b.query_y)


def variant_fn(name: str, model, batch, steps: int, first_order: bool):
    """A zero-argument callable computing one meta-gradient with variant ``name``."""
    if name.startswith("metalib"):
        strategy = {"metalib": "auto", "metalib-vmap": "vmap", "metalib-loop": "loop"}[name]
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


def child(variant: str, workload: str, args) -> dict:
    """Time one variant on one workload in this (fresh) process."""
    device = resolve_device(args.device)
    steps, fo = WORKLOADS[workload]
    model = conv4(5, seed=0, device=device)
    batch = make_batch(args.meta_batch, device)
    fn = variant_fn(variant, model, batch, steps, fo)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        fn()
    sync()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    sec = sorted(times)[len(times) // 2]  # median
    mem = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
           else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
    return {"variant": variant, "workload": workload, "s_per_step": sec, "tasks_per_s": args.meta_batch / sec,
            "peak_mem_mb": mem}


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
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("output/benchmarks"))
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "WORKLOAD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(*args.child, args)), flush=True)
        return

    device = resolve_device(args.device)
    variants = args.variants or ["metalib", "naive", *PEERS] + (["metalib-vmap"] if device.type == "cuda" else [])
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; peers: {sorted(PEERS)}; not loaded: {PEER_ERRORS or 'none'}")
    agreement = check_agreement(variants, device)
    for k, v in agreement.items():
        print(f"  agreement {k}: max |g - g_naive| = {v:.1e}")
        if v > 1e-8:
            raise SystemExit(f"{k} disagrees with the naive loop ({v:.2e}); not timing it")

    rows = []
    for wl in args.workloads:
        for v in variants:
            cmd = [sys.executable, __file__, "--child", v, wl, "--device", args.device, "--meta-batch",
                   str(args.meta_batch), "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
            res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
            if res.returncode or not line:
                print(f"  {v} / {wl} failed:\n{res.stderr[-2000:]}")
                continue
            rows.append(json.loads(line[0][7:]))
            r = rows[-1]
            print(f"  {wl:20s} {v:14s} {r['s_per_step']:8.3f} s/step {r['tasks_per_s']:8.1f} tasks/s "
                  f"{r['peak_mem_mb']:8.0f} MB", flush=True)

    for wl in args.workloads:
        wl_rows = [r for r in rows if r["workload"] == wl]
        peers = [r["tasks_per_s"] for r in wl_rows if r["variant"] in PEER_NAMES]
        naive = [r["tasks_per_s"] for r in wl_rows if r["variant"] == "naive"]
        for r in wl_rows:
            r["x_fastest_peer"] = r["tasks_per_s"] / max(peers) if peers else None
            r["x_naive"] = r["tasks_per_s"] / naive[0] if naive else None
    print(f"\n| workload | variant | s / meta-step | tasks/s | x fastest peer | x naive | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        xp = f"{r['x_fastest_peer']:.2f}" if r["x_fastest_peer"] else "-"
        xn = f"{r['x_naive']:.2f}" if r["x_naive"] else "-"
        print(f"| {r['workload']} | {r['variant']} | {r['s_per_step']:.3f} | {r['tasks_per_s']:.1f} | {xp} | {xn} "
              f"| {r['peak_mem_mb']:.0f} |")
    result = {"device": name, "meta_batch": args.meta_batch, "torch": torch.__version__, "rows": rows,
              "agreement": agreement, "peer_errors": PEER_ERRORS}
    if device.type == "cuda":
        result["largest_meta_batch"] = {f"{s} steps": largest_meta_batch(s, device) for s in (1, 5)}
        print("largest second-order meta-batch that fits:", result["largest_meta_batch"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"inner_loop_{device.type}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

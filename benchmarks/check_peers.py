"""Check the peer MAML adapters against the naive loop, then time them on CPU.

Run from the repository root with the peers' environment:
    .peers-venv/bin/python benchmarks/check_peers.py

1. Reference sanity: the naive second-order meta-gradient matches a central finite difference of the
   meta-loss. This uses a smooth conv4 variant (tanh, average pooling): with ReLU/max-pooling the adapted
   weights jump where the inner gradient does, so finite differences of the real conv4 are meaningless.
2. Agreement (float64, conv4, 5-way 1-shot, 15 queries): max |grad_peer - grad_naive| over all
   parameters for (1 step, 2nd order), (5 steps, 2nd order), (1 step, 1st order); also checks that
   every adapter leaves the model untouched. Exit code 1 if anything fails.
3. Timing (float32, CPU, 2 threads, meta-batch 8, 1 step, 2nd order): seconds per meta-step. Adapters
   run round-robin so that load from other processes hits them alike; the wall-clock minimum and
   the process CPU time are the least sensitive to that load.
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
from torch import Tensor, nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
from metalib.models import TaskBatchNorm, conv4  # noqa: E402

N_WAY, K_SHOT, N_QUERY, INNER_LR = 5, 1, 15, 0.4
CONFIGS = [(1, False), (5, False), (1, True)]  # (steps, first_order)
Batch = tuple[Tensor, Tensor, Tensor, Tensor]


def make_batch(n_tasks: int, dtype: torch.dtype, seed: int = 0) -> Batch:
    """Random Omniglot-shaped meta-batch: images ~ N(0, 1), labels 0..N-1 in order."""
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(n_tasks, N_WAY * K_SHOT, 1, 28, 28, generator=g, dtype=dtype)
    qx = torch.randn(n_tasks, N_WAY * N_QUERY, 1, 28, 28, generator=g, dtype=dtype)
    sy = torch.arange(N_WAY).repeat_interleave(K_SHOT).expand(n_tasks, -1).contiguous()
    qy = torch.arange(N_WAY).repeat_interleave(N_QUERY).expand(n_tasks, -1).contiguous()
    return sx, sy, qx, qy


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def max_abs_diff(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    assert a.keys() == b.keys(), "adapters disagree on parameter names"
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ------------------------------------------------------------------------------- 1. reference sanity

def smooth_conv4() -> nn.Module:
    """conv4 (float64) with ReLU -> tanh and max- -> average pooling: a smooth meta-loss."""
    model = conv4(n_classes=N_WAY, seed=0).double()
    for i, m in enumerate(model.features):
        if isinstance(m, nn.ReLU):
            model.features[i] = nn.Tanh()
        elif isinstance(m, nn.MaxPool2d):
            model.features[i] = nn.AvgPool2d(2)
    assert any(isinstance(m, TaskBatchNorm) for m in model.features)
    return model


def meta_loss(model: nn.Module, params: dict[str, Tensor], batch: Batch, steps: int) -> Tensor:
    """Mean query loss after ``steps`` inner SGD steps, written independently with ``torch.func.grad``."""
    def loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    losses = []
    for sx, sy, qx, qy in zip(*batch):
        fast = params
        for _ in range(steps):
            grads = torch.func.grad(loss)(fast, sx, sy)
            fast = {k: w - INNER_LR * grads[k] for k, w in fast.items()}
        losses.append(loss(fast, qx, qy))
    return torch.stack(losses).mean()


def finite_difference_error(model: nn.Module, batch: Batch, steps: int, eps: float = 1e-6) -> float:
    """Relative error of <naive meta-gradient, v> against a central difference along a random v."""
    grad = peers.meta_gradient_naive(model, *batch, inner_lr=INNER_LR, steps=steps, first_order=False)
    params = snapshot(model)
    g = torch.Generator().manual_seed(1)
    v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}
    with torch.no_grad():
        plus = meta_loss(model, {k: p + eps * v[k] for k, p in params.items()}, batch, steps)
        minus = meta_loss(model, {k: p - eps * v[k] for k, p in params.items()}, batch, steps)
    fd = (plus - minus).item() / (2 * eps)
    analytic = sum((grad[k] * v[k]).sum().item() for k in grad)
    return abs(fd - analytic) / abs(fd)


def check_reference(tol: float = 1e-4) -> bool:
    model, batch = smooth_conv4(), make_batch(2, torch.float64)
    errors = {steps: finite_difference_error(model, batch, steps) for steps in (1, 5)}
    print("naive 2nd-order meta-gradient vs central finite difference (smooth conv4, float64): relative error "
          + ", ".join(f"{e:.1e} ({s} step{'s' * (s > 1)})" for s, e in errors.items()))
    return max(errors.values()) <= tol


# ------------------------------------------------------------------------------- 2. agreement

def check_agreement(adapters: dict[str, peers.MetaGradientFn], n_tasks: int, tol: float) -> bool:
    model = conv4(n_classes=N_WAY, seed=0).double()
    batch = make_batch(n_tasks, torch.float64)
    before = snapshot(model)
    ok = True
    cells: dict[str, list[str]] = {name: [] for name in adapters}
    grads: dict[tuple[int, bool], dict[str, Tensor]] = {}
    for steps, first_order in CONFIGS:
        kw = dict(inner_lr=INNER_LR, steps=steps, first_order=first_order)
        ref = grads[steps, first_order] = peers.meta_gradient_naive(model, *batch, **kw)
        for name, fn in adapters.items():
            diff = max_abs_diff(fn(model, *batch, **kw), ref)
            unchanged = max_abs_diff(snapshot(model), before) == 0.0
            ok &= diff <= tol and unchanged
            cells[name].append(f"{diff:.1e}" + ("" if unchanged else " MODEL CHANGED"))

    print(f"\nagreement with the naive loop (float64, meta-batch {n_tasks}, inner lr {INNER_LR}): "
          "max abs difference of the meta-gradient")
    print(f"{'adapter':12s}" + "".join(f"{f'{s} step, ' + ('1st' if fo else '2nd') + ' order':>20s}"
                                       for s, fo in CONFIGS))
    for name, row in cells.items():
        print(f"{name:12s}" + "".join(f"{c:>20s}" for c in row))
    scale = max(g.abs().max().item() for g in grads[1, False].values())
    fo_gap = max_abs_diff(grads[1, True], grads[1, False])
    print(f"(scale: max |meta-gradient| {scale:.2f}; 1st vs 2nd order differ by up to {fo_gap:.2f})")
    return ok


# ------------------------------------------------------------------------------- 3. timing

def time_adapters(adapters: dict[str, peers.MetaGradientFn], n_tasks: int, warmup: int, iters: int) -> None:
    model = conv4(n_classes=N_WAY, seed=0)
    batch = make_batch(n_tasks, torch.float32, seed=1)
    times: dict[str, list[float]] = {name: [] for name in adapters}
    cpu: dict[str, list[float]] = {name: [] for name in adapters}
    load_before = os.getloadavg()[0]
    for i in range(warmup + iters):
        for name, fn in adapters.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn(model, *batch, inner_lr=INNER_LR, steps=1, first_order=False)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    print(f"\nCPU timing: s per meta-step, float32, {torch.get_num_threads()} threads, meta-batch {n_tasks}, "
          f"1 step, 2nd order; {warmup} warm-up + {iters} timed, round-robin "
          f"(1-min load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    print("(wall = time.perf_counter; cpu = process CPU time over all threads, less sensitive to other load)")
    print(f"{'adapter':12s}{'wall min':>10s}{'wall med':>10s}{'cpu med':>10s}{'min/naive':>11s}{'cpu/naive':>11s}")
    base, cpu_base = min(times["naive"]), statistics.median(cpu["naive"])
    for name, ts in times.items():
        c = statistics.median(cpu[name])
        print(f"{name:12s}{min(ts):10.3f}{statistics.median(ts):10.3f}{c:10.3f}"
              f"{min(ts) / base:10.2f}x{c / cpu_base:10.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-tasks", type=int, default=4, help="meta-batch of the float64 agreement check")
    parser.add_argument("--tol", type=float, default=1e-9, help="max abs difference allowed in float64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-tasks", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; peers: " + ", ".join(f"{k} {v}" for k, v in peers.PEER_VERSIONS.items()))
    for name, why in peers.PEER_ERRORS.items():
        print(f"  {name} unavailable: {why}")

    ok = True
    if not args.skip_checks:
        ok = check_reference()
        ok &= check_agreement(peers.PEERS, args.check_tasks, args.tol)
        print("checks: " + ("OK" if ok else "FAILED"))
    if not args.skip_timing:
        time_adapters({"naive": peers.meta_gradient_naive, **peers.PEERS}, args.time_tasks, args.warmup, args.iters)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

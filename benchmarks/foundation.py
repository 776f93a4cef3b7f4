"""Reference figures for the metalib foundation (a script, not a test).

    python benchmarks/foundation.py protonet    # ProtoNets, Omniglot 5-way 1-shot
    python benchmarks/foundation.py maml        # second-order MAML, 5-way 1-shot, fixed time budget
    python benchmarks/foundation.py sinusoid    # MAML vs joint pre-training on sinusoids, 5-shot
    python benchmarks/foundation.py throughput  # metalib's strategies vs the naive per-task loop, tasks/s

Each prints its result and writes JSON (and the training history as CSV) to ``--out``
(default ``output/benchmarks``). Test results are over the Vinyals test split, 600 tasks, 95% CI.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from metalib import EpisodeSampler, SinusoidTasks, conv4, evaluate, meta_train, mlp, omniglot_splits, resolve_device
from metalib.algorithms import maml, pretrain, protonet


def _save(out: Path, name: str, result: dict, history=None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    if history is not None:
        history.to_csv(out / f"{name}_history.csv", index=False)
    print(json.dumps(result, indent=2))


def run_protonet(args) -> None:
    splits = omniglot_splits("vinyals", data_dir=args.data_dir)
    device = resolve_device(args.device)
    train = EpisodeSampler(splits["train"], ways=args.train_ways, shots=5, queries=args.train_queries,
                           seed=args.seed, device=device)
    val = EpisodeSampler(splits["val"], ways=5, shots=1, queries=15, seed=args.seed + 1, device=device)
    test = EpisodeSampler(splits["test"], ways=5, shots=1, queries=15, seed=args.seed + 2, device=device)
    learner = protonet(conv4(0, seed=args.seed, device=device))
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2000, gamma=0.5)  # halved every 2000 episodes
    start = time.perf_counter()
    hist = meta_train(learner, train, steps=args.steps, meta_batch=1, optimizer=optimizer, scheduler=scheduler,
                      val_sampler=val, val_every=args.val_every, val_tasks=200, time_budget=args.time_budget,
                      checkpoint=args.out / "protonet.pt")
    train_s = time.perf_counter() - start
    res = evaluate(learner, test, n_tasks=600)
    print(res)
    _save(args.out, "protonet", {"test": res.as_dict(), "train_wall_s": train_s,
                                 "train_time_s": float(hist["time_s"].iloc[-1]), "episodes": int(hist["step"].iloc[-1]),
                                 "train_ways": args.train_ways, "device": str(device),
                                 "threads": torch.get_num_threads()}, hist)


def run_maml(args) -> None:
    splits = omniglot_splits("vinyals", data_dir=args.data_dir)
    device = resolve_device(args.device)
    train = EpisodeSampler(splits["train"], ways=5, shots=1, queries=15, seed=args.seed, device=device)
    val = EpisodeSampler(splits["val"], ways=5, shots=1, queries=15, seed=args.seed + 1, device=device)
    test = EpisodeSampler(splits["test"], ways=5, shots=1, queries=15, seed=args.seed + 2, device=device)
    learner = maml(conv4(5, seed=args.seed, device=device), inner_lr=0.4, steps=1)
    hist = meta_train(learner, train, steps=args.steps, meta_batch=args.meta_batch, val_sampler=val,
                      val_every=args.val_every, val_tasks=100, val_steps=3, time_budget=args.time_budget,
                      checkpoint=args.out / "maml.pt")
    res = evaluate(learner, test, n_tasks=600, steps=3)
    print(res)
    _save(args.out, "maml", {"test": res.as_dict(), "train_time_s": float(hist["time_s"].iloc[-1]),
                             "meta_steps": int(hist["step"].iloc[-1]), "meta_batch": args.meta_batch,
                             "device": str(device), "threads": torch.get_num_threads()}, hist)


def run_sinusoid(args) -> None:
    device = resolve_device(args.device)
    train = SinusoidTasks(shots=5, queries=10, seed=args.seed, device=device)
    test = SinusoidTasks(shots=5, queries=100, seed=args.seed + 2, device=device)
    out = {"published": {"maml": [0.67, 0.38, 0.35], "pretrain": [2.41, 2.23, 2.19]}, "steps": [1, 5, 10]}
    for name, make in [("maml", maml), ("pretrain", pretrain)]:
        model = mlp(seed=args.seed, device=device)
        learner = make(model, inner_lr=0.01, problem="regression") if name == "pretrain" else \
            make(model, inner_lr=0.01, steps=1, problem="regression")
        start = time.perf_counter()
        meta_train(learner, train, steps=args.sine_steps, meta_batch=25, val_every=max(args.sine_steps // 10, 1),
                   progress=True)
        out[f"{name}_train_s"] = time.perf_counter() - start
        for k in (1, 5, 10):
            r = evaluate(learner, test, n_tasks=600, steps=k, batch_size=100)
            out[f"{name}_mse_{k}"] = [r.mean, r.ci95]
            print(name, k, r)
    out["iterations"] = args.sine_steps
    _save(args.out, "sinusoid", out)


def run_throughput(args) -> None:
    """metalib's strategies against the naive loop (no peer libraries needed): the interleaved timing of
    ``inner_loop.py``, which also runs the peers."""
    from argparse import Namespace

    from inner_loop import WORKLOADS, check_agreement, time_workload
    workloads = [w for w, (steps, fo) in WORKLOADS.items() if steps in args.inner_steps and not fo]
    variants = ["metalib", "metalib-threads", "metalib-loop", "metalib-batched", "naive"]
    device = resolve_device(args.device)
    for k, v in check_agreement(variants, device).items():
        print(f"agreement {k}: max |g - g_naive| = {v:.1e}")
    rows = {}
    for wl in workloads:
        times = time_workload(variants, wl, Namespace(device=args.device, meta_batch=args.meta_batch, warmup=1,
                                                      repeats=args.repeats))
        median = {v: sorted(t)[len(t) // 2] for v, t in times.items()}
        for v, sec in median.items():
            rows[f"{v} | {wl}"] = {"s_per_meta_step": sec, "tasks_per_s": args.meta_batch / sec,
                                   "x_naive": median["naive"] / sec}
    for k, v in rows.items():
        print(f"{k:40s} {v['s_per_meta_step']:8.3f} s/step {v['tasks_per_s']:8.2f} tasks/s {v['x_naive']:5.2f}x")
    _save(args.out, "throughput", {"meta_batch": args.meta_batch, "device": str(device),
                                   "threads": torch.get_num_threads(), "rows": rows})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["protonet", "maml", "sinusoid", "throughput"])
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("output/benchmarks"))
    p.add_argument("--steps", type=int, default=60000)
    p.add_argument("--time-budget", type=float, default=None, help="seconds of training")
    p.add_argument("--val-every", type=int, default=100)
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--train-ways", type=int, default=20)
    p.add_argument("--train-queries", type=int, default=15)
    p.add_argument("--sine-steps", type=int, default=70000)
    p.add_argument("--inner-steps", type=int, nargs="+", default=[1])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    {"protonet": run_protonet, "maml": run_maml, "sinusoid": run_sinusoid, "throughput": run_throughput}[args.what](args)


if __name__ == "__main__":
    main()

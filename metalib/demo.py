"""A two-minute demo without notebooks: meta-train MAML on sinusoids and ProtoNets on Omniglot,
then evaluate both with 95% intervals.   python -m metalib.demo"""
from __future__ import annotations

import sys

from metalib import (EpisodeSampler, SinusoidTasks, conv4, evaluate, make_learner, meta_train, mlp, omniglot_splits,
                     resolve_device)


def main(seed: int = 0, device: str = "auto") -> None:
    dev = resolve_device(device)
    print(f"device: {dev}")
    learner = make_learner("maml", mlp(seed=seed, device=dev), problem="regression", inner_lr=0.01, inner_steps=1)
    meta_train(learner, SinusoidTasks(shots=5, queries=10, seed=seed, device=dev), steps=2000, meta_batch=25,
               val_every=500, progress=sys.stderr.isatty())
    test = SinusoidTasks(shots=5, queries=100, seed=seed + 2, device=dev)
    for steps in (1, 10):
        print("MAML sinusoid 5-shot:", evaluate(learner, test, n_tasks=600, steps=steps, batch_size=100))

    splits = omniglot_splits("vinyals", splits=("train", "test"))
    proto = make_learner("protonet", conv4(0, seed=seed, device=dev))
    meta_train(proto, EpisodeSampler(splits["train"], ways=20, shots=5, queries=15, seed=seed, device=dev),
               steps=150, meta_batch=1, val_every=50, progress=sys.stderr.isatty())
    print("ProtoNet Omniglot 5-way 1-shot:",
          evaluate(proto, EpisodeSampler(splits["test"], 5, 1, 15, seed=seed + 2, device=dev), n_tasks=600))


if __name__ == "__main__":
    main()

"""The exercises of notebook 08 (learning the optimiser and the architecture): their tests, with the notebook's
objects passed in."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..single_task import Examples, LearnedOptimizer, SearchSpace, TaskFamily, darts_search, meta_train_optimizer

__all__ = ["verify_08_1", "verify_08_2"]


def verify_08_1(ratio: float, *, reference: LearnedOptimizer, family: TaskFamily, meta_steps: int, horizon: int,
                meta_lr: float, seed: int, final_losses: Callable[[Mapping[str, object]], pd.Series]) -> tuple[bool, str]:
    """The final-loss ratio, unroll 5 over unroll 10 (``reference``), on the longer runs: the learned optimiser is
    meta-trained again with unrolls of 5; ``final_losses({name: optimiser})`` gives each one's final loss there."""
    opt5 = LearnedOptimizer(hidden=(32,), lr=0.01, seed=seed)
    meta_train_optimizer(opt5, family, meta_steps=meta_steps, unroll_steps=5, horizon=horizon, meta_lr=meta_lr, seed=seed)
    s = final_losses({"5": opt5, "10": reference})
    truth = s["5"] / s["10"]
    return abs(np.log(ratio / truth)) < 0.05, f"The ratio measured now is {truth:.3g}"


def verify_08_2(arch: Sequence[str], *, space: SearchSpace, train_data: Examples, val_data: Examples, steps: int,
                alpha_lr: float, seed: int, device: torch.device) -> tuple[bool, str]:
    """The architecture a first-order DARTS search derives from a fresh supernet of ``space`` (seed ``seed``)."""
    net = space.supernet(seed=seed, device=device)
    darts_search(net, train_data, val_data, steps, order="first", alpha_lr=alpha_lr)
    return tuple(arch) == net.derive(), "That is not what the first-order search derives from this seed"

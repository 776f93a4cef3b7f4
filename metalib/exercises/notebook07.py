"""The exercises of notebook 07 (beyond MAML): their tests, with the notebook's objects passed in."""
from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from ..algorithms import IMAML
from ..tasks import TaskBatch

__all__ = ["verify_07_1", "verify_07_2"]


def verify_07_1(k: int, *, learner: IMAML, batch: TaskBatch, exact: Tensor, max_steps: int) -> tuple[bool, str]:
    """The fewest conjugate-gradient iterations at which iMAML's meta-gradient (of a linear model, flattened as
    weight then bias) is within 1e-8 of ``exact``. The learner's ``cg_steps`` is restored."""
    before = learner.cg_steps

    def error(cg: int) -> float:
        learner.cg_steps = cg
        grads = learner.meta_gradient(batch)[0]
        return (torch.cat([grads["head.weight"].flatten(), grads["head.bias"]]) - exact).abs().max().item()
    try:
        smallest = next((cg for cg in range(1, max_steps + 1) if error(cg) < 1e-8), None)
    finally:
        learner.cg_steps = before
    return int(k) == smallest, "the error first drops below 1e-8 at a different number of iterations"


def verify_07_2(k: int, *, memory: pd.DataFrame) -> tuple[bool, str]:
    """The fewest inner steps of the ``memory`` table at which MAML's graph is over twice iMAML's."""
    table = memory.pivot(index="inner steps", columns="method", values="graph MiB")
    first = next((s for s in table.index if table.loc[s, "MAML"] > 2 * table.loc[s, "iMAML"]), None)
    return int(k) == first, "read the two columns of the memory table again"

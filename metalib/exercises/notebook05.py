"""The exercises of notebook 05 (prototypical networks): their tests, with the notebook's objects passed in."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from ..algorithms import MetaLearner, make_learner
from ..data import ClassSplit
from ..evaluate import evaluate
from ..models import conv4
from ..tasks import EpisodeSampler, TaskBatch

__all__ = ["verify_05_1", "verify_05_2", "verify_05_3"]


def verify_05_1(fn: Callable[[nn.Module, TaskBatch], Tensor], *, embedding: nn.Module,
                test_sets: Mapping[str, EpisodeSampler], hidden: int, device: torch.device) -> tuple[bool, str]:
    """``fn(embedding, task)``: ProtoNets' query logits, checked in float64 against metalib's on the trained
    ``embedding`` for 5-way 5-shot and 20-way 1-shot tasks."""
    net = conv4(0, hidden=hidden, device=device).double()
    net.load_state_dict(embedding.state_dict())  # the trained embedding, in float64
    for setting in ("5-way 5-shot", "20-way 1-shot"):
        task = test_sets[setting].task(3).to(dtype=torch.float64)
        with torch.no_grad():
            reference, yours = make_learner("protonet", net).logits(task)[0], fn(net, task)
        if yours.shape != reference.shape:
            return False, f"{setting}: logits of shape {tuple(yours.shape)}, expected {tuple(reference.shape)}"
        if not torch.allclose(yours, reference, rtol=1e-6, atol=1e-6):
            return False, f"{setting}: your logits differ from protonet's by up to {(yours - reference).abs().max():.2g}"
    return True, ""


def verify_05_2(letters: str) -> tuple[bool, str]:
    """The changes (of a-f) that alter a ProtoNet's probabilities: b and f."""
    chosen = set("".join(letters).lower()) - set(" ,")
    right = sum((c in chosen) == (c in "bf") for c in "abcdef")
    return chosen == set("bf"), f"{right} of the 6 changes are classified right"


def verify_05_3(accuracy: float, *, learner: MetaLearner, split: ClassSplit, queries: int, n_tasks: int, seed: int,
                device: torch.device) -> tuple[bool, str]:
    """``learner``'s 20-way 5-shot accuracy on the first ``n_tasks`` episodes of ``split`` (sampler seed
    ``seed + 1``), within 1.5 points."""
    five_shot = EpisodeSampler(split, 20, 5, queries, seed=seed + 1, device=device)
    reference = evaluate(learner, five_shot, n_tasks=n_tasks).mean
    accuracy = getattr(accuracy, "mean", accuracy)  # an EvalResult is fine too
    return abs(accuracy - reference) <= 0.015, f"{accuracy:.3f} is not the accuracy on those episodes"

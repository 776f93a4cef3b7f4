"""The exercises of notebook 02 (task construction): their tests, with the notebook's objects passed in."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch

from ..data import ClassSplit
from ..tasks import EpisodeSampler

__all__ = ["verify_02_1", "verify_02_2", "verify_02_3"]


def verify_02_1(sampler: EpisodeSampler, *, splits: Mapping[str, ClassSplit]) -> tuple[bool, str]:
    """A 20-way 5-shot sampler of the validation split."""
    if not isinstance(sampler, EpisodeSampler) or (sampler.ways, sampler.shots) != (20, 5):
        return False, "expected an EpisodeSampler with 20 ways and 5 shots"
    if sampler.num_classes != splits["val"].num_classes:
        return False, f"its split has {sampler.num_classes} classes, the validation split {splits['val'].num_classes}"
    task = sampler.task(0).to("cpu")
    classes, drawings = task.info["class_ids"][0], task.info["support_drawing_ids"][0].view(20, 5)
    expected = splits["val"].images[classes[:, None], drawings].flatten(0, 1).unsqueeze(1) / 255
    return torch.equal(task.support_x[0], expected), "its episodes are not drawn from splits['val']"


def verify_02_2(fn: Callable[[ClassSplit, ClassSplit], Iterable[str]], *,
                splits: Mapping[str, ClassSplit]) -> tuple[bool, str]:
    """``fn(a, b)``: the characters two splits share, rotations being the same character."""
    a = ClassSplit("a", torch.zeros(3, 1, 1, 1), ["X/character01/rot000", "X/character02/rot090", "Y/character01/rot180"])
    b = ClassSplit("b", torch.zeros(2, 1, 1, 1), ["X/character01/rot270", "Z/character05/rot000"])
    if set(fn(a, b)) != {"X/character01"}:
        return False, "two rotations of a character are the same character (and nothing else is shared here)"
    if set(fn(splits["train"], splits["test"])) or set(fn(splits["val"], splits["test"])):
        return False, "the Vinyals train, val and test splits share no character"
    return len(set(fn(splits["trainval"], splits["val"]))) == 172, "trainval contains all 172 validation characters"


def verify_02_3(indices: Iterable[int], *, train_tasks: EpisodeSampler) -> tuple[bool, str]:
    """The task indices the second of two processes builds at step 7 with meta-batch 8."""
    same = train_tasks.batch(list(indices)).equal(train_tasks.sample(7, 8)[4:])
    return same, "train_tasks.batch(indices) is not the second half of step 7's meta-batch"

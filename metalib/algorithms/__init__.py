"""Meta-learning algorithms. Gradient-based ones are configurations of the one inner loop
(:mod:`metalib.inner`); every learner follows the :class:`~metalib.algorithms.base.MetaLearner` contract.

=============  ======================================================
``base``       ``MetaLearner``: the contract training and evaluation use
``gradient``   MAML, FOMAML, Meta-SGD, ANIL, joint pre-training
``reptile``    Reptile
``protonet``   Prototypical Networks
=============  ======================================================
"""
from __future__ import annotations

from torch import nn

from ..errors import ArgumentError
from .base import MetaLearner
from .gradient import GradientMetaLearner, anil, fomaml, maml, metasgd, pretrain
from .protonet import ProtoNet, protonet
from .reptile import Reptile, reptile

__all__ = ["MetaLearner", "GradientMetaLearner", "Reptile", "ProtoNet", "maml", "fomaml", "metasgd", "anil",
           "reptile", "protonet", "pretrain", "make_learner", "ALGORITHMS"]

ALGORITHMS = {"maml": maml, "fomaml": fomaml, "metasgd": metasgd, "anil": anil, "reptile": reptile,
              "protonet": protonet, "pretrain": pretrain}


def make_learner(name: str, model: nn.Module, **kw) -> MetaLearner:
    """Build a learner by name: one of ``ALGORITHMS``."""
    if name not in ALGORITHMS:
        raise ArgumentError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name](model, **kw)

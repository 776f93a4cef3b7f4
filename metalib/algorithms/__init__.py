"""Meta-learning algorithms. Gradient-based ones are configurations of the one inner loop
(:mod:`metalib.inner`); every learner follows the :class:`~metalib.algorithms.base.MetaLearner` contract.

=============  ======================================================
``base``       ``MetaLearner``: the contract training and evaluation use
``gradient``   MAML, FOMAML, Meta-SGD, ANIL, Proto-MAML, joint pre-training
``mamlpp``     MAML++: per-step learning rates and BatchNorm, multi-step loss, derivative-order annealing
``reptile``    Reptile
``imaml``      iMAML: the implicit meta-gradient (conjugate gradient on Hessian-vector products)
``protonet``   Prototypical Networks
``blackbox``   black-box learners: a CNP (regression), an attention learner over the support set (classification)
``ridge``      R2D2 / MetaOptNet-ridge: a closed-form ridge-regression head
=============  ======================================================
"""
from __future__ import annotations

from torch import nn

from ..errors import ArgumentError
from .base import MetaLearner
from .gradient import GradientMetaLearner, anil, fomaml, maml, metasgd, pretrain, protomaml
from .mamlpp import MAMLPlusPlus, mamlpp
from .blackbox import CNP, AttentionLearner, attention_learner, cnp
from .imaml import IMAML, imaml
from .protonet import ProtoNet, protonet
from .ridge import R2D2, r2d2
from .reptile import Reptile, reptile

__all__ = ["MetaLearner", "GradientMetaLearner", "Reptile", "ProtoNet", "maml", "fomaml", "metasgd", "anil",
           "reptile", "protonet", "mamlpp", "MAMLPlusPlus", "protomaml", "r2d2", "R2D2", "imaml", "IMAML", "cnp", "CNP", "attention_learner", "AttentionLearner", "pretrain", "make_learner", "ALGORITHMS"]

ALGORITHMS = {"maml": maml, "fomaml": fomaml, "metasgd": metasgd, "anil": anil, "mamlpp": mamlpp,
              "protomaml": protomaml, "imaml": imaml, "reptile": reptile,
              "protonet": protonet, "r2d2": r2d2, "attention": attention_learner, "cnp": cnp, "pretrain": pretrain}


def make_learner(name: str, model: nn.Module, **kw) -> MetaLearner:
    """Build a learner by name: one of ``ALGORITHMS``."""
    if name not in ALGORITHMS:
        raise ArgumentError(f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}")
    return ALGORITHMS[name](model, **kw)

"""Meta-learning algorithms. Gradient-based ones are configurations of the one inner loop
(:mod:`metalib.inner`); every learner follows the :class:`~metalib.algorithms.base.MetaLearner` contract and
registers itself (:mod:`~metalib.algorithms.registry`): its name, its typed settings and its factory.

=============  ======================================================
``registry``   ``register``, ``make_learner``, ``Settings``: how learners are declared and built
``base``       ``MetaLearner``: the contract training and evaluation use
``gradient``   MAML, FOMAML, Meta-SGD, ANIL, Proto-MAML, joint pre-training
``mamlpp``     MAML++: per-step learning rates and BatchNorm, multi-step loss, derivative-order annealing
``reptile``    Reptile
``imaml``      iMAML: the implicit meta-gradient (conjugate gradient on Hessian-vector products)
``protonet``   Prototypical Networks
``matching``   Matching Networks: cosine attention over the support set, optional full context embeddings
``relation``   Relation Networks: a learned relation module on pairs of feature maps
``transfer``   the transfer baselines: Baseline, Baseline++, SimpleShot, linear probe, fine-tuning
``blackbox``   black-box learners: a CNP (regression), an attention learner over the support set (classification)
``ridge``      R2D2 / MetaOptNet-ridge: a closed-form ridge-regression head
=============  ======================================================
"""
from __future__ import annotations

from .base import MetaLearner
from .registry import (REGISTRY, BuildContext, LearnerSpec, NoSettings, Settings, build_learner, build_model,
                       learner_spec, make_learner, register, setting, settings_for, unregister)
# each module below registers its learners when imported
from .gradient import GradientMetaLearner, anil, fomaml, maml, metasgd, pretrain, protomaml
from .mamlpp import MAMLPlusPlus, mamlpp
from .blackbox import CNP, AttentionLearner, attention_learner, cnp
from .imaml import IMAML, imaml
from .protonet import ProtoNet, protonet
from .matching import MatchingNet, matching
from .relation import RelationNet, relation
from .transfer import TransferLearner, transfer_learner
from .ridge import R2D2, r2d2
from .reptile import Reptile, reptile

__all__ = ["MetaLearner", "GradientMetaLearner", "Reptile", "ProtoNet", "MatchingNet", "RelationNet", "TransferLearner",
           "transfer_learner", "MAMLPlusPlus",
           "R2D2", "IMAML", "CNP", "AttentionLearner", "maml", "fomaml", "metasgd", "anil", "reptile", "protonet",
           "matching", "relation", "mamlpp", "protomaml", "r2d2", "imaml", "cnp", "attention_learner", "pretrain",
           "REGISTRY", "LearnerSpec", "Settings", "NoSettings", "BuildContext", "setting", "register", "unregister",
           "learner_spec", "make_learner", "settings_for", "build_model", "build_learner"]

"""metalib: the small, tested library behind the metalib notebooks.

Everything a notebook cell needs is importable from here::

    from metalib import omniglot_splits, EpisodeSampler, conv4, maml, meta_train, evaluate

Figures and widgets live in :mod:`metalib.viz` (they need the notebook extras: matplotlib, seaborn,
ipywidgets) and load on use; ``record_metric`` (:mod:`metalib.metrics`) reports a notebook's results.
"""
from . import hyper
from .algorithms import ALGORITHMS, GradientMetaLearner, MetaLearner, ProtoNet, Reptile, anil, fomaml, \
    make_learner, maml, metasgd, pretrain, protonet, reptile
from .checkpoints import load_checkpoint, save_checkpoint
from .data import ClassSplit, load_omniglot, omniglot_splits
from .evaluate import EvalResult, adaptation_curve, adapted_predictions, confidence_interval, evaluate
from .errors import UserError
from .execution import Execution
from .inner import InnerConfig, adapt, forward, forward_adapted, task_losses
from .metrics import record_metric
from .models import BATCHNORM_MODE, MLP, Conv4, TaskBatchedModel, conv4, mlp
from .pretrained import load_pretrained
from .problems import CLASSIFICATION, REGRESSION, Problem
from .recipes import RECIPES, get_recipe
from .tasks import EpisodeSampler, SinusoidTasks, TaskBatch, TaskSampler
from .train import NonFiniteError, TrainingInterrupted, make_optimizer, meta_train
from .utils import DeviceError, resolve_device, seed_everything, setup

__version__ = "0.1.0"

__all__ = [
    "hyper", "ALGORITHMS", "GradientMetaLearner", "MetaLearner", "ProtoNet", "Reptile", "anil", "fomaml",
    "make_learner", "maml", "metasgd", "pretrain", "protonet", "reptile", "load_checkpoint", "save_checkpoint",
    "ClassSplit", "load_omniglot", "omniglot_splits", "EvalResult", "adaptation_curve", "adapted_predictions",
    "confidence_interval", "evaluate", "Execution", "InnerConfig", "adapt", "forward", "forward_adapted",
    "task_losses", "record_metric", "BATCHNORM_MODE", "MLP", "Conv4", "TaskBatchedModel", "conv4", "mlp",
    "load_pretrained", "CLASSIFICATION", "REGRESSION", "Problem", "RECIPES", "get_recipe", "EpisodeSampler", "SinusoidTasks",
    "TaskBatch", "TaskSampler", "NonFiniteError", "TrainingInterrupted", "make_optimizer", "meta_train", "resolve_device",
    "seed_everything", "setup", "UserError", "DeviceError",
]

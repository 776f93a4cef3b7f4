"""metalib: the small, tested library behind the metalib notebooks.

Everything a notebook cell needs is importable from here, one layer after another::

    from metalib import omniglot_splits, EpisodeSampler, conv4, make_learner, meta_train, evaluate

==================  ==========================================================================================
data and tasks      ``omniglot_splits``, ``load_dataset`` (a benchmark or your own image folder), ``ClassSplit``,
                    ``FewShotDataset``, ``EpisodeSampler``, ``SinusoidTasks``, ``TaskBatch``, ``ClassBatches``
                    (pre-training minibatches)
models              ``conv4``, ``resnet12``, ``mlp``, ``backbone(name, ...)``
the inner loop      ``InnerConfig``, ``adapt``, ``task_losses``, ``forward_adapted``, ``resolve_strategy``
learners            ``make_learner(name, model, **settings)`` for every registered algorithm (``REGISTRY``)
training            ``meta_train``, ``make_optimizer``, ``save_checkpoint``, ``load_checkpoint``, ``run_dir``
evaluation          ``evaluate`` (mean and 95% interval), ``paired_difference``, ``adaptation_curve``,
                    ``adapted_predictions``
prediction          ``predict`` (support images and labels + new images -> labels and probabilities),
                    ``predict_folders``
the model zoo       ``load_pretrained``, ``pretrained_preprocess``, ``pretrained`` (manifests, ``results()``),
                    ``reproduce`` (retrain recipes)
notebooks           ``setup``, ``record_metric``, ``measure``, ``viz`` (figures and widgets, loaded on use)
==================  ==========================================================================================

The single-task lessons (hyperparameters, search, learned optimisers, DARTS) are :mod:`metalib.single_task`;
exercise checkers are :mod:`metalib.exercises`.
"""
from .algorithms import (REGISTRY, GradientMetaLearner, LearnerSpec, MetaLearner, Settings, learner_spec, make_learner,
                         register, settings_for)
from .algorithms.ridge import ridge_head
from .checkpoints import load_checkpoint, load_snapshots, run_dir, save_checkpoint
from .data import (BENCHMARKS, ClassSplit, FewShotDataset, ImagePreprocess, load_benchmark, load_dataset,
                   load_image_folder, load_omniglot, omniglot_splits)
from .evaluate import (EvalResult, adaptation_curve, adapted_predictions, confidence_interval, evaluate,
                       paired_difference)
from .errors import UserError
from .execution import Execution
from .inner import InnerConfig, adapt, forward, forward_adapted, resolve_strategy, task_losses
from .metrics import record_metric
from .models import TRAINING_BATCHNORM, MLP, Conv4, ResNet12, TaskBatchedModel, backbone, conv4, mlp, resnet12
from .predict import Prediction, predict, predict_folders
from .pretrained import load_pretrained, pretrained_preprocess
from .problems import CLASSIFICATION, REGRESSION, Problem
from .profiling import measure
from .recipes import RECIPES, Recipe, get_recipe
from .tasks import ClassBatches, EpisodeSampler, SinusoidTasks, TaskBatch, TaskSampler
from .train import NonFiniteError, TrainingInterrupted, make_optimizer, meta_train
from .utils import DeviceError, resolve_device, seed_everything, setup

__version__ = "0.1.0"

__all__ = [
    "REGISTRY", "GradientMetaLearner", "LearnerSpec", "MetaLearner", "Settings", "learner_spec", "make_learner",
    "register", "settings_for", "ridge_head", "load_checkpoint", "load_snapshots", "run_dir", "save_checkpoint",
    "ClassSplit", "load_omniglot", "omniglot_splits", "EvalResult", "adaptation_curve", "adapted_predictions",
    "confidence_interval", "evaluate", "UserError", "Execution", "InnerConfig", "adapt", "forward", "forward_adapted",
    "resolve_strategy", "task_losses", "record_metric", "TRAINING_BATCHNORM", "MLP", "Conv4", "TaskBatchedModel",
    "conv4", "mlp", "load_pretrained", "CLASSIFICATION", "REGRESSION", "Problem", "measure", "RECIPES", "Recipe",
    "get_recipe", "EpisodeSampler", "SinusoidTasks", "TaskBatch", "TaskSampler", "NonFiniteError",
    "TrainingInterrupted", "make_optimizer", "meta_train", "DeviceError", "resolve_device", "seed_everything", "setup",
    "pretrained", "reproduce", "viz", "BENCHMARKS", "FewShotDataset", "ImagePreprocess", "load_benchmark",
    "load_dataset", "load_image_folder", "ResNet12", "resnet12", "backbone", "Prediction", "predict", "predict_folders",
    "pretrained_preprocess", "paired_difference", "ClassBatches",
]


def __getattr__(name: str):
    """Loaded on first use: ``viz`` (needs the notebook extras) and ``reproduce`` (retrains recipes through the
    command line's code path)."""
    import importlib
    if name == "viz":
        return importlib.import_module(f".{name}", __name__)
    if name == "reproduce":
        from .pretrained.export import reproduce
        return reproduce
    raise AttributeError(f"module 'metalib' has no attribute {name!r}")

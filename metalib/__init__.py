"""metalib: the small, tested library behind the metalib notebooks.

Everything a notebook cell needs is importable from here::

    from metalib import omniglot_splits, EpisodeSampler, conv4, maml, meta_train, evaluate
"""
from .algorithms import ALGORITHMS, GradientMetaLearner, MetaLearner, ProtoNet, Reptile, anil, fomaml, \
    make_learner, maml, metasgd, pretrain, protonet, reptile
from . import hyper  # plots and widgets load on use (`from metalib import plots`): they need matplotlib
from .data import ClassSplit, load_omniglot, omniglot_splits
from .inner import CLASSIFICATION, REGRESSION, InnerConfig, adapt, forward, task_losses
from .models import BATCHNORM_MODE, MLP, Conv4, conv4, mlp
from .tasks import EpisodeSampler, SinusoidTasks, TaskBatch
from .utils import resolve_device, seed_everything
from .train import EvalResult, NonFiniteError, confidence_interval, evaluate, load_checkpoint, make_optimizer, \
    meta_train, save_checkpoint

__version__ = "0.1.0"

"""Single-task meta-learning: learn the ``w`` of one task's learning algorithm ``F_w`` (notebooks 00, 01 and 08).

==========================  ==================================================================================
``examples``                what the lessons share: ``(x, y)`` sets, training data, losses, episode splits
``hyper``                   hyperparameters by gradient through the unrolled training run, or online
``search``                  the AutoML baseline: grid and random search within a budget
``learned_optimizer``       the optimiser itself, meta-learned over a family of tasks
``darts``                   the structure: a differentiable architecture search (DARTS) and random search
==========================  ==================================================================================

A notebook imports this package, ``from metalib.single_task import hypergradient, grid_search, ...``.
"""
from .examples import Data, Examples, LossFn, classification_scores, data_at, loss_on, split_episode
from .hyper import (Hyper, hyper_values, hypergradient, hypergradient_descent, initial_params, learning_rates,
                    make_hyper, meta_fit, train, unrolled_train)
from .search import SearchResult, grid_search, random_search
from .learned_optimizer import (LearnedOptimizer, OptState, Task, TaskFamily, meta_train_optimizer, regression_family,
                                run_optimizer, unroll)
from .darts import (DEFAULT_OPS, OPS, Architecture, MixedOp, Network, SearchNetwork, SearchSpace, architecture_gradient,
                    darts_search, derive, mixture_table, network_scores, random_architecture_search, split_images,
                    train_network)

__all__ = ["Data", "Examples", "LossFn", "classification_scores", "data_at", "loss_on", "split_episode", "Hyper",
           "hyper_values", "hypergradient", "hypergradient_descent", "initial_params", "learning_rates", "make_hyper",
           "meta_fit", "train", "unrolled_train", "SearchResult", "grid_search", "random_search", "LearnedOptimizer",
           "OptState", "Task", "TaskFamily", "meta_train_optimizer", "regression_family", "run_optimizer", "unroll",
           "DEFAULT_OPS", "OPS", "Architecture", "MixedOp", "Network", "SearchNetwork", "SearchSpace",
           "architecture_gradient", "darts_search", "derive", "mixture_table", "network_scores",
           "random_architecture_search", "split_images", "train_network"]

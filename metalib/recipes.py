"""Training recipes: the settings of every shipped model, as data.

A recipe is one row of settings (algorithm, model, episodes, optimiser, schedule, inner loop,
evaluation). ``python -m metalib.train_cli --recipe NAME`` runs it (explicit options still
override single fields), ``make run PROFILE=full`` points the notebooks at the same names, and
every model in :mod:`metalib.pretrained` records the recipe and the exact command that made it.

The published figures next to each recipe are those of the paper the row names (Vinyals split,
600 test tasks, 95% interval where the paper gives one).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping

from .algorithms import Settings, learner_spec
from .algorithms.gradient import MAMLSettings
from .algorithms.imaml import IMAMLSettings
from .algorithms.mamlpp import MAMLPlusPlusSettings
from .algorithms.reptile import ReptileSettings
from .errors import ArgumentError

__all__ = ["Recipe", "RECIPES", "get_recipe"]

_NOT_OPTIONS = ("name", "algorithm", "tests", "batchnorm", "published", "why", "learner", "weights")


@dataclass(frozen=True)
class Recipe:
    """One named training configuration: the task, the learner's typed settings (``learner``, the algorithm's
    :class:`~metalib.algorithms.Settings`), the optimiser and schedule, and how it is evaluated."""

    name: str
    algorithm: str
    ways: int                      # training episodes (ProtoNets train "higher-way" than they test)
    shots: int
    queries: int                   # query examples per class in *training* episodes
    steps: int                     # outer steps
    meta_batch: int
    outer_lr: float
    lr_schedule: str = "constant"  # constant | cosine (to lr_min) | step (x lr_gamma every lr_step_size)
    lr_min: float = 0.0
    lr_step_size: int = 2000
    lr_gamma: float = 0.5
    optimizer: str = "adam"
    learner: Settings | None = None  # the algorithm's settings (None: its defaults)
    eval_steps: int | None = None  # test-time adaptation steps (None: the learner's training steps)
    dataset: str = "omniglot"      # omniglot, sinusoid or a benchmark (metalib.data.BENCHMARKS)
    model: str = "conv4"           # image backbone: conv4 or resnet12
    image_size: int | None = None  # None: the dataset's own
    hidden: int = 64               # conv4 channels
    train_split: str = "train"     # vinyals classes trained on: train, or trainval (the papers' 1200 characters)
    batch_size: int | None = None  # images per minibatch of the learners pre-trained on minibatches (transfer)
    tests: tuple[tuple[int, int], ...] = ((5, 1),)  # (ways, shots) columns this model is evaluated on
    batchnorm: tuple[str, ...] = ("transductive",)  # evaluation modes (metalib.inner.inductive); Reptile reports both
    eval_queries: int = 15
    seed: int = 0
    val_every: int = 500
    val_tasks: int = 200
    snapshot_every: int = 500      # meta-parameter snapshots for the accuracy-against-time curve
    published: dict[str, str] = field(default_factory=dict)
    why: str = ""
    weights: str | None = None     # another recipe whose trained weights this one evaluates its own way (the transfer
    # baselines that pre-train alike share one training run and one model file)

    def __post_init__(self):
        cls = learner_spec(self.algorithm).settings
        settings = cls.resolve({}, self.problem) if self.learner is None else self.learner
        if not isinstance(settings, cls):
            raise ArgumentError(f"recipe {self.name!r} trains {self.algorithm}, whose settings are {cls.__name__}, "
                                f"but gives {type(settings).__name__}")
        object.__setattr__(self, "learner", settings)
        object.__setattr__(self, "tests", tuple(tuple(t) for t in self.tests))
        object.__setattr__(self, "batchnorm", tuple(self.batchnorm))

    @property
    def problem(self) -> str:
        """The tasks it trains on: classification (Omniglot) or regression (the sinusoids)."""
        return "regression" if self.dataset == "sinusoid" else "classification"

    def options(self) -> dict[str, Any]:
        """The ``train_cli`` option values this recipe sets (its first test column is the evaluation's)."""
        ways, shots = self.tests[0]
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_OPTIONS}
        if self.lr_schedule != "cosine":  # a schedule's parameters only where it is the schedule: the others are
            del out["lr_min"]             # the command line's defaults, as a run of the same schedule records them
        if self.lr_schedule != "step":
            del out["lr_step_size"], out["lr_gamma"]
        out.update(algorithm=self.algorithm, eval_ways=ways, eval_shots=shots, **self.learner.as_dict())
        return out

    def as_dict(self) -> dict:
        d = asdict(self)
        for k, default in (("model", "conv4"), ("image_size", None), ("batch_size", None), ("weights", None)):
            # (fields added since the zoo's manifests were written)
            if d[k] == default:
                del d[k]
        d["learner"] = self.learner.as_dict()
        d["tests"] = [list(t) for t in self.tests]
        d["batchnorm"] = list(self.batchnorm)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        """The recipe a manifest records; one written before recipes held typed settings (the learner's settings
        as fields of their own: ``inner_lr``, ``inner_steps``, ``inner_batches``, ``zero_head``) is migrated."""
        d = dict(d)
        if "learner" not in d:  # the flat format: settings that were left unset were None
            own = learner_spec(d["algorithm"]).settings.options()
            d["learner"] = {k: d.pop(k) for k in list(d) if k in own and d[k] is not None}
            for k in ("inner_lr", "inner_steps", "inner_batches", "zero_head"):
                d.pop(k, None)
        problem = "regression" if d.get("dataset") == "sinusoid" else "classification"
        settings_cls = learner_spec(d["algorithm"]).settings
        unknown = [k for k in d if k not in {f.name for f in fields(cls)}]
        if unknown:
            raise ArgumentError(f"recipe {d.get('name')!r} has fields this metalib does not know: {unknown}")
        d["learner"] = settings_cls.resolve(d["learner"], problem)
        d["tests"] = tuple(tuple(t) for t in d.get("tests", ((5, 1),)))
        return cls(**d)


_MAML_PAPER = {"5w1s": "98.7 +/- 0.4", "5w5s": "99.9 +/- 0.1", "20w1s": "95.8 +/- 0.3", "20w5s": "98.9 +/- 0.2"}
_PROTO_PAPER = {"5w1s": "98.8", "5w5s": "99.7", "20w1s": "96.0", "20w5s": "98.9"}

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("maml-omniglot-5w1s", "maml", ways=5, shots=1, queries=5, steps=8000, meta_batch=32, outer_lr=1e-3,
           lr_schedule="cosine", lr_min=1e-5, eval_steps=3,
           learner=MAMLSettings(inner_lr=0.4, inner_steps=1),
           published={"5w1s": _MAML_PAPER["5w1s"]},
           why="Finn et al.'s Omniglot settings (meta-batch 32, one inner step at 0.4, 3 test steps) with 5 "
               "training queries per class (2.2x faster steps than 15 on 2 CPU cores) and a cosine-annealed "
               "outer learning rate, so that 8000 steps fit in about two hours."),
    Recipe("maml-omniglot-5w5s", "maml", ways=5, shots=5, queries=5, steps=2500, meta_batch=16, outer_lr=1e-3,
           lr_schedule="cosine", lr_min=1e-5, eval_steps=3, tests=((5, 5),),
           learner=MAMLSettings(inner_lr=0.4, inner_steps=1),
           published={"5w5s": _MAML_PAPER["5w5s"]},
           why="The 5-way 1-shot MAML recipe with 5 shots (5 queries per class, as Finn et al.'s code draws K "
               "support and K query images per class) and meta-batch 16 instead of 32: a 5-shot step costs 2.5x "
               "a 1-shot one on 2 CPU cores (3.9 against 1.6 s at meta-batch 32), so halving the meta-batch "
               "buys twice the outer steps; 2500 cosine-annealed steps, about 1.5 hours on 2 cores."),
    Recipe("maml-omniglot-20w1s", "maml", ways=20, shots=1, queries=1, steps=3500, meta_batch=16, outer_lr=1e-3,
           lr_schedule="cosine", lr_min=1e-5, eval_steps=3, tests=((20, 1),),
           learner=MAMLSettings(inner_lr=0.4, inner_steps=1),
           published={"20w1s": _MAML_PAPER["20w1s"]},
           why="20-way 1-shot MAML with Finn et al.'s 20-way meta-batch of 16 and their one query per class, but "
               "the 5-way inner loop (one step at 0.4 instead of their 5 steps at 0.1, a fifth of the cost) and "
               "3 test steps: a step costs 1.5 s on 2 CPU cores (2.5 s with 5 queries), so 3500 "
               "cosine-annealed steps fit in about 1.5 hours, where Finn et al. train 60 000."),
    Recipe("fomaml-omniglot-5w1s", "fomaml", ways=5, shots=1, queries=5, steps=2500, meta_batch=32, outer_lr=1e-3,
           lr_schedule="cosine", lr_min=1e-5, eval_steps=10,
           learner=MAMLSettings(inner_lr=0.1, inner_steps=5),
           published={"5w1s": "98.3 +/- 0.5"},
           why="First-order MAML (Finn et al.'s first-order row) with 5 inner steps at 0.1 instead of MAML's one step "
               "at 0.4: with one step the first-order meta-gradient learned slowly here (89% after 5000 steps; "
               "validation 79% after 500, where 5 steps at 0.1 reached 93%). Otherwise MAML's recipe; 10 test "
               "steps at 0.1; 2500 cosine-annealed steps: 74 minutes on 2 cores (3.3 CPU-seconds per step)."),
    Recipe("anil-omniglot-5w1s", "anil", ways=5, shots=1, queries=5, steps=4000, meta_batch=32, outer_lr=1e-3,
           lr_schedule="cosine", lr_min=1e-5, eval_steps=3,
           learner=MAMLSettings(inner_lr=0.4, inner_steps=1),
           published={},
           why="Raghu et al. train ANIL with MAML's settings and adapt only the classifier head; they report "
               "20-way figures only (96.2 / 98.0), so the 5-way 1-shot row has no published figure. 4000 "
               "cosine-annealed steps, about 80 minutes on one core of 2 (1.2 s per step)."),
    Recipe("anil-omniglot-20w1s", "anil", ways=20, shots=1, queries=1, steps=6000, meta_batch=16, outer_lr=1e-3,
           lr_schedule="cosine", lr_min=1e-5, eval_steps=10, tests=((20, 1),),
           learner=MAMLSettings(inner_lr=0.1, inner_steps=5),
           published={"20w1s": "96.2 +/- 0.5"},
           why="Raghu et al.'s 20-way 1-shot row: ANIL trained with Finn et al.'s 20-way MAML settings (meta-batch "
               "16, one query per class, 5 inner steps at 0.1 on the head only); 10 test steps. A step costs about "
               "0.65 s on one core of 2 (adapting only the head makes 5 inner steps nearly as cheap as one), so "
               "6000 cosine-annealed steps fit in about 70 minutes, where Finn et al. train 60 000. 92.80% at 20-way "
               "1-shot after 66.5 minutes on one core (validation flat from step 4500), against 96.2 published."),
    Recipe("mamlpp-omniglot-5w1s", "mamlpp", ways=5, shots=1, queries=5, steps=3600, meta_batch=8, outer_lr=1e-3,
           lr_schedule="cosine", lr_min=1e-5, eval_steps=5,
           learner=MAMLPlusPlusSettings(inner_lr=0.1, inner_steps=5),
           published={"5w1s": "99.47"},
           why="Antoniou et al.'s MAML++ as their paper trains it: 5 inner steps whose per-step, per-layer rates start at "
               "0.1, per-step BatchNorm weights, the multi-step loss annealed over the first 1/15 of the run, "
               "first-order meta-gradients for the first third, Adam 1e-3 cosine-annealed to 1e-5, and the same 5 "
               "steps at test. Meta-batch 8 and 5 queries per class (as the MAML recipe); 3600 outer steps (the "
               "paper: 150 epochs of 500) so that the run fits about 100 minutes on one core of 2 (1.2 s per "
               "first-order step, about 1.9 s per second-order one). 97.65% at 5-way 1-shot after 76.7 minutes on one "
               "core shared with other work (validation still rising), against 99.47 published."),
    Recipe("mamlpp-omniglot-20w1s", "mamlpp", ways=20, shots=1, queries=1, steps=2000, meta_batch=8, outer_lr=1e-3,
           lr_schedule="cosine", lr_min=1e-5, eval_steps=5, tests=((20, 1),),
           learner=MAMLPlusPlusSettings(inner_lr=0.1, inner_steps=5),
           published={"20w1s": "97.65 +/- 0.33"},
           why="The 5-way 1-shot MAML++ recipe at 20 ways with one query per class (Finn et al.'s 20-way episodes, "
               "40 images per task against 5-way's 30): 5 inner steps with per-step, per-layer rates from 0.1, "
               "per-step BatchNorm, the annealed multi-step loss, first-order for the first third, Adam 1e-3 "
               "cosine-annealed to 1e-5, meta-batch 8 (the paper: 16), 2000 outer steps so that the run fits "
               "about 100 minutes on one core of 2 (a 30-step probe, 10 of them first order, took 106 s "
               "with its 200-task validation; the paper trains 150 epochs of 500)."),
    Recipe("imaml-omniglot-5w1s", "imaml", ways=5, shots=1, queries=5, steps=1000, meta_batch=8, outer_lr=1e-3,
           lr_schedule="cosine", lr_min=1e-5, eval_steps=16, val_every=250, snapshot_every=250,
           learner=IMAMLSettings(inner_lr=0.05, inner_steps=16, proximal=2.0, cg_steps=5, cg_damping=22.0),
           published={"5w1s": "99.16 +/- 0.35"},
           why="Rajeswaran et al.'s iMAML with gradient descent as the inner solver (their row 'iMAML, GD': 99.16 +/- 0.35; "
               "the 99.50 +/- 0.26 of their Hessian-free row solves the inner problem by Newton-CG with a line search, "
               "which metalib does not implement) and their Omniglot settings (16 inner SGD steps on the paper's "
               "inner problem, the support loss plus the proximal term with lambda 2; 5 conjugate-gradient "
               "iterations; Adam 1e-3; the same 16 steps and proximal term at test) but meta-batch 8 instead of 32, "
               "5 queries per class (as the MAML recipe; theirs: 1) and 1000 outer steps cosine-annealed to 1e-5, "
               "where their code trains 20 000: a meta-batch of 8 costs about 3.3 s on one core of 2 (the 16 inner "
               "steps 1.2 s, the 5 Hessian-vector products 1.2 s, the query gradient 0.4 s, the rest the support "
               "gradients at the solution and at the start), so the run fits about an hour beside another. The "
               "implicit gradient is damped as their code damps it: it solves (2 I + H / 12) g = grad with its "
               "defaults, the same direction as (I + H / 24) g = grad, so cg_damping 22 on lambda 2. Undamped, the "
               "paper's exact (I + H / 2)^-1 diverged here: after 500 steps the system was indefinite for 80% of "
               "the tasks, the inner problem a 53% residual, validation 35.3%. Damped, with their inner rate 0.1, "
               "it learned slowly (validation 67.8% after 250 steps, 71.4% after 500) with the inner problem far "
               "from solved (a 29% residual): at that run's step-500 weights, 16 tasks adapted at 0.05 instead "
               "scored 80.3% on their queries against 70.8% (residual 11% against 30%; 0.2: 53.5%), so the inner "
               "rate is 0.05. Their code also takes the 16 steps "
               "on the support loss alone, then one proximal pull-back step, and adapts with lambda 0 at test; "
               "metalib solves the paper's proximal problem at training and at test."),
    Recipe("metasgd-omniglot-5w1s", "metasgd", ways=5, shots=1, queries=5, steps=3000, meta_batch=32, outer_lr=1e-3,
           lr_schedule="cosine", lr_min=1e-5, eval_steps=1,
           learner=MAMLSettings(inner_lr=0.4, inner_steps=1),
           published={"5w1s": "99.53 +/- 0.26"},
           why="The MAML recipe with a learned inner learning rate per weight (Li et al. adapt with one step, at "
               "training and at test); the rates start at MAML's 0.4. 3000 cosine-annealed steps: 100 minutes "
               "on one core of 2 with another run on the other core (about 2 s per step)."),
    Recipe("reptile-omniglot-5w1s", "reptile", ways=5, shots=5, queries=1, steps=7000, meta_batch=10, outer_lr=1e-3,
           lr_schedule="cosine", lr_min=0.0, eval_steps=10,
           batchnorm=("transductive", "inductive"),
           learner=ReptileSettings(inner_lr=0.4, inner_steps=5, inner_batches=5),
           published={"5w1s": "97.68 +/- 0.04", "5w1s inductive": "95.39 +/- 0.09"},
           why="Nichol et al.'s Omniglot recipe shape (more training shots than test shots, 5 inner steps on "
               "different minibatches, a small meta-batch, the outer step annealed to 0) cut to fit about an hour "
               "on one core of 2: 5 training shots, one example per class in each of the 5 inner steps, SGD at "
               "0.4 (the paper: 10 shots, Adam 1e-3 on minibatches of 10), meta-batch 10, the Reptile "
               "pseudo-gradient fed to Adam 1e-3 (the paper's own suggestion) cosine-annealed to 0, 10 test steps "
               "on the whole support set (the paper: 50). Only the query scores use the queries, so 1 per class "
               "suffices. The paper trains 100 000 steps; this recipe 7000 (a probe: 88% validation after 500)."),
    Recipe("protonet-omniglot-1shot", "protonet", ways=60, shots=1, queries=5, steps=4000, meta_batch=1,
           outer_lr=1e-3, lr_schedule="step", lr_step_size=2000, lr_gamma=0.5, tests=((5, 1), (20, 1)),
           published={k: _PROTO_PAPER[k] for k in ("5w1s", "20w1s")},
           why="Snell et al.'s Omniglot training: 60-way episodes, 5 queries per class, shots as at test time, "
               "Adam 1e-3 halved every 2000 episodes; stopped at 4000 episodes (about 30 minutes on 2 cores)."),
    Recipe("protonet-omniglot-5shot", "protonet", ways=60, shots=5, queries=5, steps=2500, meta_batch=1,
           outer_lr=1e-3, lr_schedule="step", lr_step_size=1000, lr_gamma=0.5, tests=((5, 5), (20, 5)),
           published={k: _PROTO_PAPER[k] for k in ("5w5s", "20w5s")},
           why="As the 1-shot recipe with 5 shots; the learning rate halves every 1000 episodes to fit about "
               "35 minutes on 2 cores."),
]}

# the 1-shot ProtoNet on train + val, annealed by a cosine: derived, so it differs from the train-only recipe in
# the training classes and the schedule only
RECIPES["protonet-omniglot-1shot-trainval"] = replace(
    RECIPES["protonet-omniglot-1shot"], name="protonet-omniglot-1shot-trainval", train_split="trainval", val_tasks=0,
    steps=4800, lr_schedule="cosine", lr_min=0.0,
    why="protonet-omniglot-1shot trained on the 1200 characters of train + val (4800 rotated classes), as Snell et al. "
        "and Finn et al. trained for their test figures, instead of train's 1028; no validation. The learning rate "
        "follows a cosine from 1e-3 to 0 over 4800 episodes (about 30 minutes on 2 cores) instead of halving every "
        "2000: with the step schedule and 4000 episodes the same classes gave 98.30% at 5-way 1-shot, with the cosine "
        "98.53% (BENCHMARKS.md).")

RECIPES["protonet-omniglot-5shot-trainval"] = replace(
    RECIPES["protonet-omniglot-5shot"], name="protonet-omniglot-5shot-trainval", train_split="trainval", val_tasks=0,
    lr_schedule="cosine", lr_min=0.0,
    why="protonet-omniglot-5shot trained as protonet-omniglot-1shot-trainval: on the 1200 characters of train + val, "
        "no validation, the learning rate annealed by a cosine from 1e-3 to 0 over the same 2500 episodes "
        "(29.6 minutes on 2 idle cores).")


_MATCHING_PAPER = {"5w1s": "98.1", "5w5s": "98.9", "20w1s": "93.8", "20w5s": "98.5"}

# Matching Networks trained exactly as the headline 1-shot ProtoNet (protonet-omniglot-1shot-trainval), so that the
# paired difference between the two on the same test tasks is the classifier's alone: prototypes against attention
RECIPES["matching-omniglot-1shot"] = replace(
    RECIPES["protonet-omniglot-1shot-trainval"], name="matching-omniglot-1shot", algorithm="matching", learner=None,
    published={k: _MATCHING_PAPER[k] for k in ("5w1s", "20w1s")},
    why="Matching Networks (cosine attention, no full context embeddings: Vinyals et al.'s Omniglot rows) trained as "
        "protonet-omniglot-1shot-trainval: 60-way 1-shot episodes with 5 queries per class on the 1200 characters "
        "of train + val, Adam from 1e-3 cosine-annealed to 0 over 4800 episodes, no validation. Vinyals et al. train "
        "on episodes of the test's ways; higher-way episodes are Snell et al.'s finding for both learners. The "
        "attention's logit scale is learned from 10 (the paper has none).")

RECIPES["relation-omniglot-5w1s"] = Recipe(
    "relation-omniglot-5w1s", "relation", ways=5, shots=1, queries=19, steps=15000, meta_batch=1, outer_lr=1e-3,
    lr_schedule="cosine", lr_min=0.0, train_split="trainval", val_tasks=0, val_every=1000, snapshot_every=1000,
    tests=((5, 1), (20, 1)), published={"5w1s": "99.6 +/- 0.2", "20w1s": "97.6 +/- 0.2"},
    why="Sung et al.'s Omniglot training: 5-way 1-shot episodes with 19 queries per class, one episode per step, "
        "Adam from 1e-3, the squared-error loss, the embedding pooling in its first two blocks only (64 maps of "
        "7x7), on the 1200 characters of train + val; the learning rate cosine-annealed to 0 over 15 000 "
        "episodes (about an hour on one core of 2) where the paper halves it every 100 000 of 1 000 000. The paper "
        "trains its 20-way figure on 20-way episodes; this model is trained on 5-way ones and also tested at 20 ways.")

_ALL_COLUMNS = ((5, 1), (5, 5), (20, 1), (20, 5))

# the transfer baselines: one supervised pre-training of conv4 over the 4800 rotated classes of train + val, the
# classes the meta-learners of the zoo's trainval rows saw
RECIPES["baseline-omniglot"] = Recipe(
    "baseline-omniglot", "baseline", ways=4800, shots=1, queries=15, steps=15000, meta_batch=1, batch_size=64,
    outer_lr=1e-3, lr_schedule="cosine", lr_min=0.0, train_split="trainval", val_tasks=0, val_every=1500,
    snapshot_every=1500, tests=_ALL_COLUMNS,
    why="Chen et al.'s Baseline pre-training: conv4 with a linear classifier over every training class (the 4800 "
        "rotated characters of train + val), cross-entropy on shuffled minibatches of 64 images, Adam from 1e-3 "
        "cosine-annealed to 0 over 15 000 steps (10 epochs; about half an hour on one core of 2), no augmentation. "
        "At test time a new linear head is trained on each support set (100 full-batch SGD steps at 0.01, momentum "
        "0.9, weight decay 1e-3) with the body frozen. SimpleShot, the linear probe and fine-tuning pre-train the "
        "same way, so they share these weights. No paper reports these baselines on Omniglot's Vinyals protocol.")

for _name, _how in (("simpleshot", "nearest centroid on features centred by the training images' mean feature and "
                                   "L2-normalised (Wang et al.'s CL2N)"),
                    ("linear_probe", "multinomial logistic regression on L2-normalised features, L2 penalty 1 "
                                     "(scikit-learn's default C = 1, as Tian et al.), L-BFGS for up to 100 iterations"),
                    ("finetune", "every weight fine-tuned on the support set with a cosine head (scale 10) started at "
                                 "the support's normalised class means (Dhillon et al.'s support-based initialisation), "
                                 "25 full-batch SGD steps at 0.01 (their 25 epochs), without their transductive entropy term")):
    RECIPES[f"{_name}-omniglot"] = replace(
        RECIPES["baseline-omniglot"], name=f"{_name}-omniglot", algorithm=_name, learner=None,
        weights="baseline-omniglot",
        why=f"The baseline-omniglot pre-training (its weights: the two learners train identically), tested by {_how}.")

# Baseline++ pre-trains with its own (cosine) head, so it cannot share baseline-omniglot's weights
RECIPES["baseline_pp-omniglot"] = replace(
    RECIPES["baseline-omniglot"], name="baseline_pp-omniglot", algorithm="baseline_pp", learner=None,
    why="Chen et al.'s Baseline++: baseline-omniglot's pre-training (conv4 over the 4800 rotated characters of train + "
        "val, minibatches of 64, Adam from 1e-3 cosine-annealed to 0 over 15 000 steps) with a cosine classifier, "
        "logits 10 cos(z, w_c) and no bias (their scale for more than 200 training classes). At test time a new cosine "
        "head (scale 10) started at the support's normalised class means is trained on each support set (100 "
        "full-batch SGD steps at 0.01, momentum 0.9, weight decay 1e-3) with the body frozen. No paper reports "
        "Baseline++ on Omniglot's Vinyals protocol.")

RECIPES["maml-omniglot-5w1s-trainval"] = replace(
    RECIPES["maml-omniglot-5w1s"], name="maml-omniglot-5w1s-trainval", train_split="trainval", val_tasks=0,
    lr_min=0.0,
    why="maml-omniglot-5w1s trained as Finn et al. trained for their test figures: on the 1200 characters of train + "
        "val instead of train's 1028, no validation (which also saves its time), the outer learning rate annealed "
        "by a cosine from 1e-3 to 0 over the same 8000 steps (113 minutes on 2 idle cores). The same two "
        "changes took the 1-shot ProtoNet from 98.32% to 98.53%; MAML got 98.17% against the train-only 98.25% "
        "(paired over the same 600 tasks: -0.08 +/- 0.15 points), so for MAML they are not the lever.")

# the same budget spent on twice the meta-steps of half the tasks each: a step costs about half (0.43 against 0.85 s
# on 2 cores), so it differs from maml-omniglot-5w1s in meta-batch and steps only (the tasks seen are as many)
RECIPES["maml-omniglot-5w1s-mb16"] = replace(
    RECIPES["maml-omniglot-5w1s"], name="maml-omniglot-5w1s-mb16", meta_batch=16, steps=16000, val_every=1000,
    snapshot_every=1000,
    why="maml-omniglot-5w1s with meta-batch 16 instead of Finn et al.'s 32 and 16000 cosine-annealed steps instead of "
        "8000: the same 256 000 training tasks in the same time (113 minutes on 2 idle cores), in twice the outer "
        "steps. 98.42% at 5-way 1-shot, against 98.25% for the 8000 steps of 32 (BENCHMARKS.md).")


# Reptile's 7000 steps ended with validation still creeping up (94.34% at 5000, 94.46% at 7000) under a cosine
# schedule; the same recipe over twice the steps, the rest unchanged
RECIPES["reptile-omniglot-5w1s-14k"] = replace(
    RECIPES["reptile-omniglot-5w1s"], name="reptile-omniglot-5w1s-14k", steps=14000, val_every=1000,
    snapshot_every=1000,
    why="reptile-omniglot-5w1s over 14 000 cosine-annealed steps instead of 7000 (about two hours on one core of 2; "
        "the paper trains 100 000), everything else unchanged: 7000 gave 94.88 +/- 0.44 transductive.")

# two recipes at 20 ways, each its 5-way parent with the episodes, budget and (iMAML) inner steps of the 20-way row
RECIPES["maml-omniglot-20w5s"] = replace(
    RECIPES["maml-omniglot-5w5s"], name="maml-omniglot-20w5s", ways=20, steps=900, meta_batch=8, tests=((20, 5),),
    val_every=300, snapshot_every=300, published={"20w5s": _MAML_PAPER["20w5s"]},
    why="The 5-way 5-shot MAML recipe at 20 ways (5 queries per class, as Finn et al.'s code draws K support "
        "and K query images per class: 200 images per task) with meta-batch 8 instead of their 16: a "
        "meta-batch of 16 cost 11 s on one core of 2 (12 steps in 139 CPU-s), so 900 cosine-annealed steps "
        "of 8 fit about 85 minutes beside another run, where Finn et al. train 60 000 steps of 16.")
RECIPES["imaml-omniglot-20w1s"] = replace(
    RECIPES["imaml-omniglot-5w1s"], name="imaml-omniglot-20w1s", ways=20, queries=1, steps=600, eval_steps=25,
    tests=((20, 1),), val_every=200, snapshot_every=200, published={"20w1s": "94.46 +/- 0.42"},
    learner=replace(RECIPES["imaml-omniglot-5w1s"].learner, inner_steps=25),
    why="The 5-way 1-shot iMAML recipe (gradient descent as the inner solver, their row 'iMAML, GD': 94.46 +/- "
        "0.42 at 20-way 1-shot; lambda 2, 5 conjugate-gradient iterations damped as their code damps them, "
        "inner rate 0.05) with Rajeswaran et al.'s 20-way 25 inner steps, at training and at test, and one "
        "query per class (Finn et al.'s 20-way episodes). A meta-batch of 8 costs about 9 s on one core of 2 "
        "(8 steps with a small validation in 80 CPU-s), so 600 cosine-annealed steps fit about 90 minutes "
        "beside another run, where their code trains 20 000. Not shipped: gradient descent does not solve the "
        "20-way inner problem (25 steps leave the proximal gradient at 15-19% of its start at the "
        "initialisation, 1-2% at 5 ways); in training it grew to 51% by step 200 and 92% by step 400 while "
        "validation fell from 43.8 to 40.2%, and no rate from 0.01 to 0.1 or up to 200 steps did better "
        "than 50% at the step-200 weights (BENCHMARKS.md).")

# The natural-image benchmarks: ready to run where the data and a GPU are; none has been run on this project's
# 2-core CPU machines (no natural-image data can be downloaded there, and one ResNet-12 meta-step at 84x84 takes
# seconds on a CPU: BENCHMARKS.md). Each says which paper's settings it follows and the figures to compare with.
_NOT_RUN = " Not run here: no natural-image data on the project's machines (README, BENCHMARKS.md)."
for _r in [
    Recipe("protonet-miniimagenet-conv4-5w1s", "protonet", ways=30, shots=1, queries=15, steps=20000, meta_batch=1,
           outer_lr=1e-3, lr_schedule="step", lr_step_size=2000, lr_gamma=0.5, dataset="mini-imagenet",
           tests=((5, 1),), published={"5w1s": "49.42 +/- 0.78"},
           why="Snell et al.'s mini-ImageNet training: conv4 (64 channels) at 84x84, 30-way 1-shot episodes with 15 "
               "queries per class, Adam 1e-3 halved every 2000 episodes." + _NOT_RUN),
    Recipe("protonet-miniimagenet-conv4-5w5s", "protonet", ways=20, shots=5, queries=15, steps=20000, meta_batch=1,
           outer_lr=1e-3, lr_schedule="step", lr_step_size=2000, lr_gamma=0.5, dataset="mini-imagenet",
           tests=((5, 5),), published={"5w5s": "68.20 +/- 0.66"},
           why="Snell et al.'s 5-shot mini-ImageNet training: 20-way 5-shot episodes, 15 queries per class, Adam 1e-3 "
               "halved every 2000 episodes." + _NOT_RUN),
    Recipe("maml-miniimagenet-conv4-5w1s", "maml", ways=5, shots=1, queries=15, steps=60000, meta_batch=4,
           outer_lr=1e-3, eval_steps=10, dataset="mini-imagenet", hidden=32, tests=((5, 1),),
           learner=MAMLSettings(inner_lr=0.01, inner_steps=5), published={"5w1s": "48.70 +/- 1.84"},
           why="Finn et al.'s mini-ImageNet settings: conv4 with 32 channels at 84x84, 5 inner steps at 0.01 (10 at "
               "test), meta-batch 4, 15 queries per class, Adam 1e-3, 60 000 steps." + _NOT_RUN),
    Recipe("maml-miniimagenet-conv4-5w5s", "maml", ways=5, shots=5, queries=15, steps=60000, meta_batch=2,
           outer_lr=1e-3, eval_steps=10, dataset="mini-imagenet", hidden=32, tests=((5, 5),),
           learner=MAMLSettings(inner_lr=0.01, inner_steps=5), published={"5w5s": "63.11 +/- 0.92"},
           why="Finn et al.'s 5-shot mini-ImageNet settings (meta-batch 2)." + _NOT_RUN),
    Recipe("protonet-miniimagenet-resnet12-5w1s", "protonet", ways=5, shots=1, queries=6, steps=60000, meta_batch=8,
           outer_lr=1e-3, lr_schedule="cosine", lr_min=0.0, dataset="mini-imagenet", model="resnet12",
           tests=((5, 1),), published={"5w1s": "59.25 +/- 0.64"},
           why="ProtoNets with ResNet-12 (64-160-320-640) as Lee et al.'s MetaOptNet table reports them: 5-way "
               "episodes with 6 queries per class, meta-batch 8; Adam with a cosine schedule here, where Lee et al. "
               "use SGD with Nesterov momentum and step decays." + _NOT_RUN),
    Recipe("protonet-cifarfs-conv4-5w1s", "protonet", ways=30, shots=1, queries=15, steps=20000, meta_batch=1,
           outer_lr=1e-3, lr_schedule="step", lr_step_size=2000, lr_gamma=0.5, dataset="cifar-fs",
           tests=((5, 1),), published={"5w1s": "55.5 +/- 0.7"},
           why="Snell et al.'s ProtoNet training on CIFAR-FS at 32x32 (the figures are Bertinetto et al.'s for "
               "ProtoNets on CIFAR-FS)." + _NOT_RUN),
    Recipe("protonet-cifarfs-resnet12-5w1s", "protonet", ways=5, shots=1, queries=6, steps=60000, meta_batch=8,
           outer_lr=1e-3, lr_schedule="cosine", lr_min=0.0, dataset="cifar-fs", model="resnet12",
           tests=((5, 1),), published={"5w1s": "72.2 +/- 0.7"},
           why="ProtoNets with ResNet-12 on CIFAR-FS as Lee et al.'s MetaOptNet table reports them." + _NOT_RUN),
    Recipe("maml-cifarfs-conv4-5w1s", "maml", ways=5, shots=1, queries=15, steps=60000, meta_batch=4,
           outer_lr=1e-3, eval_steps=10, dataset="cifar-fs", hidden=32, tests=((5, 1),),
           learner=MAMLSettings(inner_lr=0.01, inner_steps=5), published={"5w1s": "58.9 +/- 1.9"},
           why="Finn et al.'s mini-ImageNet settings on CIFAR-FS (Bertinetto et al. report MAML there)." + _NOT_RUN),
    Recipe("maml-cifarfs-conv4-5w5s", "maml", ways=5, shots=5, queries=15, steps=60000, meta_batch=2,
           outer_lr=1e-3, eval_steps=10, dataset="cifar-fs", hidden=32, tests=((5, 5),),
           learner=MAMLSettings(inner_lr=0.01, inner_steps=5), published={"5w5s": "71.5 +/- 1.0"},
           why="Finn et al.'s 5-shot mini-ImageNet settings on CIFAR-FS (meta-batch 2)." + _NOT_RUN),
    Recipe("maml-miniimagenet-resnet12-5w1s", "maml", ways=5, shots=1, queries=15, steps=60000, meta_batch=4,
           outer_lr=1e-3, eval_steps=10, dataset="mini-imagenet", model="resnet12", tests=((5, 1),),
           learner=MAMLSettings(inner_lr=0.01, inner_steps=5), published={},
           why="Finn et al.'s mini-ImageNet settings with ResNet-12 instead of conv4. The papers this project cites "
               "report no MAML figure with ResNet-12, so there is none to compare with; a meta-step costs 39x "
               "conv4's on a CPU (BENCHMARKS.md), so this is a GPU recipe." + _NOT_RUN),
    Recipe("r2d2-cifarfs-conv4-5w1s", "r2d2", ways=16, shots=1, queries=15, steps=30000, meta_batch=8,
           outer_lr=1e-3, lr_schedule="cosine", lr_min=0.0, dataset="cifar-fs", tests=((5, 1),),
           published={"5w1s": "65.3 +/- 0.2"},
           why="R2D2 (ridge-regression head) trained on 16-way episodes as Bertinetto et al. do; conv4 with 64 "
               "channels, where their figures come from a wider 4-layer net (96-192-384-512 channels), so expect "
               "less." + _NOT_RUN),
]:
    RECIPES[_r.name] = _r


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; the error lists the known ones."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]

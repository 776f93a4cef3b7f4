"""The registry of learners: each algorithm module declares its name, its typed settings and its factory.

Adding an algorithm is one module that ends with one :func:`register` call (``docs/architecture.md``, "How to
add an algorithm"); the command line derives its options from the registered settings, recipes and manifests
store settings objects, and every learner is built the same way::

    from metalib import conv4, make_learner
    learner = make_learner("maml", conv4(5), inner_lr=0.4, inner_steps=1)

A :class:`Settings` subclass is a frozen, keyword-only dataclass whose fields are made by :func:`setting` (a
default, a help text, the valid range); constructing one validates it, so a learner is never built from
nonsense. Settings that several learners share (``inner_lr``, ``inner_steps``, ...) have one name, one type and
one meaning everywhere.
"""
from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch import nn

from ..errors import ArgumentError
from ..models import backbone as image_backbone, mlp

__all__ = ["Settings", "NoSettings", "setting", "check_number", "LearnerSpec", "BuildContext", "register", "unregister", "REGISTRY",
           "learner_spec", "make_learner", "build_learner", "build_model", "settings_for", "PROBLEMS"]

PROBLEMS = ("classification", "regression")
_KINDS = (int, float, bool)


def setting(default: Any, help: str, *, kind: type | None = None, low: float | None = None, strict: bool = False,
            high: float | None = None, regression: Any = dataclasses.MISSING, classification_only: bool = False) -> Any:
    """A field of a :class:`Settings` class: its ``default``, a ``help`` text (the command line's), its ``kind``
    (int, float or bool; the default's type unless the default is None, which then means "unset: the learner's
    own rule"), the valid range (``> low`` if ``strict`` else ``>= low``, ``<= high``), a different default for
    regression tasks, and whether it only makes sense for classification."""
    kind = kind or type(default)
    if kind not in _KINDS:
        raise TypeError(f"a setting is an int, float or bool, got {kind.__name__}")
    meta = {"help": help, "kind": kind, "low": low, "strict": strict, "high": high,
            "classification_only": classification_only}
    if regression is not dataclasses.MISSING:
        meta["regression"] = regression
    return dataclasses.field(default=default, metadata=meta)


def check_number(value: Any, *, kind: type = float, low: float | None = None, strict: bool = False,
                 high: float | None = None, nullable: bool = False) -> str | None:
    """Why ``value`` is not a valid ``kind`` (int, float or bool) in the range (``> low`` if ``strict`` else
    ``>= low``, ``<= high``), as a phrase to follow its name (``"must be a finite number > 0, got nan"``), or None.
    The one range check of learner settings and of the command line's own numeric options."""
    if value is None:
        return None if nullable else "must be set, got None"
    if kind is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if isinstance(value, (bool, str, bytes)):
        return f"must be a number, got {value!r}"
    try:
        number = operator.index(value) if kind is int else float(value)
    except (TypeError, ValueError):
        return f"must be {'an integer' if kind is int else 'a number'}, got {value!r}"
    ok = (kind is int or math.isfinite(number)) and (low is None or (number > low if strict else number >= low)) \
        and (high is None or number <= high)
    if ok:
        return None
    what = "an integer" if kind is int else "a finite number"
    bounds = ([f"{'>' if strict else '>='} {low:g}"] if low is not None else []) + \
        ([f"<= {high:g}"] if high is not None else [])
    return f"must be {what}{' ' + ' and '.join(bounds) if bounds else ''}, got {value}"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """A learner's settings: a frozen, keyword-only dataclass of :func:`setting` fields, validated when made."""

    def __post_init__(self):
        errors = type(self).check_values(dataclasses.asdict(self))
        if errors:
            raise ArgumentError(f"{type(self).__name__}: " + "; ".join(f"{k} {why}" for k, why in errors))
        for f in dataclasses.fields(self):  # NumPy and 0-d tensor numbers become plain ones
            value = getattr(self, f.name)
            if value is not None and f.metadata["kind"] is not bool:
                object.__setattr__(self, f.name, f.metadata["kind"](value))

    @classmethod
    def options(cls) -> dict[str, dataclasses.Field]:
        """The fields, by name."""
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def check_values(cls, values: Mapping[str, Any]) -> list[tuple[str, str]]:
        """``(name, why)`` for every value of ``values`` that is not valid for its field (unknown names too)."""
        fields = cls.options()
        errors = [(k, f"is not a setting of {cls.__name__} (its settings: {', '.join(fields) or 'none'})")
                  for k in values if k not in fields]
        for k, v in values.items():
            if k in fields:
                f = fields[k]
                why = check_number(v, kind=f.metadata["kind"], low=f.metadata["low"], strict=f.metadata["strict"],
                                   high=f.metadata["high"], nullable=f.default is None)
                if why:
                    errors.append((k, why))
        return errors

    @classmethod
    def defaults(cls, problem: str = "classification") -> dict[str, Any]:
        """Every field's default for ``problem`` tasks."""
        return {k: f.metadata.get("regression", f.default) if problem == "regression" else f.default
                for k, f in cls.options().items()}

    @classmethod
    def resolve(cls, given: Mapping[str, Any] | None = None, problem: str = "classification") -> "Settings":
        """The settings with ``given`` values and the defaults for ``problem`` elsewhere."""
        unknown = {k: v for k, v in (given or {}).items() if k not in cls.options()}
        errors = cls.check_values(unknown)  # the known ones are checked when the settings are made
        if errors:
            raise ArgumentError(f"{cls.__name__}: " + "; ".join(f"{k} {why}" for k, why in errors))
        return cls(**{**cls.defaults(problem), **(given or {})})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check_task(self, problem: str, shots: int | None = None) -> str | None:
        """Why these settings cannot train on ``problem`` tasks with ``shots`` support examples per class (or
        None). By default: a classification-only setting that is switched on for regression."""
        if problem != "classification":
            on = [k for k, f in self.options().items() if f.metadata["classification_only"] and getattr(self, k)]
            if on:
                return f"{', '.join(on)} needs a classifier's linear head: use classification tasks"
        return None

    def length_shapes_run(self) -> bool:
        """Whether the run's number of outer steps changes the learner (MAML++'s schedules): then a resumed run
        must keep it."""
        return False


@dataclass(frozen=True, kw_only=True)
class NoSettings(Settings):
    """The settings of a learner that has none."""


@dataclass(frozen=True)
class BuildContext:
    """What the tasks fix, not the learner: the problem, the most classes an episode will have, the seed of the
    layers a learner adds, and the inner loop's engine."""

    problem: str = "classification"
    ways: int | None = None
    seed: int | None = None
    strategy: str = "auto"


@dataclass(frozen=True)
class LearnerSpec:
    """One registered algorithm.

    ``build(model, settings, context)`` makes the learner. ``model``: what it runs on, ``"classifier"`` (a network
    with an output head: conv4(ways), or the sinusoid MLP), ``"embedding"`` (conv4 without a head),
    ``"feature_maps"`` (conv4 without a head, pooling in its first two blocks only, so that its embedding keeps
    spatial maps: Relation Networks) or ``"none"`` (it builds its own networks). ``problems``: the tasks it can learn
    (``problem_note`` says why not the others).
    ``inner_loop``: it adapts by the inner loop at test time (``inner_lr``/``inner_steps`` are its settings).
    ``optimizer``: the outer optimiser its ``default_optimizer()`` makes (Adam at 1e-3; SGD at 1.0 for Reptile).
    ``training``: what it trains on, ``"episodes"`` (N-way K-shot tasks) or ``"batches"`` (supervised minibatches over
    every training class, :class:`~metalib.tasks.ClassBatches`: the transfer baselines, whose ``ways`` is then the
    number of training classes)."""

    name: str
    settings: type[Settings]
    build: Callable[[nn.Module | None, Settings, BuildContext], nn.Module]
    summary: str
    model: str = "classifier"
    problems: tuple[str, ...] = PROBLEMS
    problem_note: str = ""
    inner_loop: bool = True
    optimizer: str = "adam"
    training: str = "episodes"
    MODELS: ClassVar[tuple[str, ...]] = ("classifier", "embedding", "feature_maps", "none")
    TRAININGS: ClassVar[tuple[str, ...]] = ("episodes", "batches")

    def __post_init__(self):
        if self.model not in self.MODELS:
            raise ValueError(f"LearnerSpec {self.name!r}: model must be one of {self.MODELS}, got {self.model!r}")
        if self.training not in self.TRAININGS:
            raise ValueError(f"LearnerSpec {self.name!r}: training must be one of {self.TRAININGS}, got {self.training!r}")
        unknown = [p for p in self.problems if p not in PROBLEMS]
        if unknown or not self.problems:
            raise ValueError(f"LearnerSpec {self.name!r}: problems must be among {PROBLEMS}, got {self.problems}")

    def check_problem(self, problem: str) -> str | None:
        """Why this learner cannot learn ``problem`` tasks (or None)."""
        if problem in self.problems:
            return None
        return f"{self.name} {self.problem_note or 'learns ' + ' and '.join(self.problems) + ' tasks'}"


REGISTRY: dict[str, LearnerSpec] = {}


def register(spec: LearnerSpec) -> LearnerSpec:
    """Add ``spec`` to the registry (re-registering a name replaces it). A setting that another learner has too
    must have the same kind there: one option, one meaning."""
    for other in REGISTRY.values():
        if other.name == spec.name:
            continue
        for k, f in spec.settings.options().items():
            g = other.settings.options().get(k)
            if g is not None and g.metadata["kind"] is not f.metadata["kind"]:
                raise ValueError(f"setting {k!r} of {spec.name} is a {f.metadata['kind'].__name__}, but of "
                                 f"{other.name} a {g.metadata['kind'].__name__}: rename one")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a learner from the registry (e.g. a test's toy learner)."""
    REGISTRY.pop(name, None)


def learner_spec(name: str) -> LearnerSpec:
    """The registered learner ``name``; the error lists the known ones."""
    if name not in REGISTRY:
        raise ArgumentError(f"unknown algorithm {name!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def settings_for(name: str, problem: str = "classification", **given: Any) -> Settings:
    """The settings of learner ``name`` with ``given`` values (the others at their defaults for ``problem``)."""
    return learner_spec(name).settings.resolve(given, problem)


def make_learner(name: str, model: nn.Module | None = None, *, problem: str = "classification",
                 ways: int | None = None, seed: int | None = None, strategy: str = "auto",
                 settings: Settings | None = None, **given: Any) -> nn.Module:
    """Learner ``name`` on ``model`` (None for a learner with its own networks), with its settings given by
    name (``inner_lr=0.4, inner_steps=1``; the others at their defaults for ``problem``) or as a ``settings``
    object. ``ways`` and ``seed`` only matter to learners that add layers of their own (the attention learner)."""
    spec = learner_spec(name)
    if settings is not None and given:
        raise ArgumentError(f"make_learner({name!r}): pass the settings object or settings by name, not both")
    if settings is None:
        settings = settings_for(name, problem, **given)
    elif not isinstance(settings, spec.settings):
        raise ArgumentError(f"make_learner({name!r}) needs {spec.settings.__name__}, got {type(settings).__name__}")
    why = spec.check_problem(problem) or settings.check_task(problem)
    if why:
        raise ArgumentError(why)
    if spec.model == "none" and model is not None:
        raise ArgumentError(f"{name} builds its own networks: pass model=None")
    if spec.model != "none" and model is None:
        example = {"embedding": "conv4(0)", "feature_maps": "conv4(0, pooled_blocks=2)"}.get(spec.model, "e.g. conv4(5)")
        raise ArgumentError(f"{name} needs a model ({example})")
    return spec.build(model, settings, BuildContext(problem, ways, seed, strategy))


def build_model(name: str, problem: str, *, ways: int, hidden: int = 64, seed: int = 0,
                device: torch.device | str = "cpu", backbone: str = "conv4", in_channels: int = 1,
                image_size: int = 28) -> nn.Module | None:
    """The network learner ``name`` runs on, seeded: the image ``backbone`` (conv4 or resnet12, for
    ``in_channels`` x ``image_size`` x ``image_size`` inputs) with a ``ways``-way head (classification; without
    a head for an embedding learner), the sinusoid MLP (regression), or None (its own networks)."""
    kind = learner_spec(name).model
    if kind == "none":
        return None
    if problem == "regression":
        return mlp(seed=seed, device=device)
    return image_backbone(backbone, 0 if kind in ("embedding", "feature_maps") else ways, in_channels=in_channels,
                          image_size=image_size, hidden=hidden, seed=seed, device=device,
                          feature_maps=kind == "feature_maps")


def build_learner(name: str, settings: Settings, *, problem: str = "classification", ways: int, eval_ways: int | None = None,
                  hidden: int = 64, seed: int = 0, device: torch.device | str = "cpu", backbone: str = "conv4",
                  in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Model and learner together, as a training run builds them: the model seeded with ``seed``, a head of
    ``ways`` classes (the training episodes'), learners with labels of their own sized for the larger of
    ``ways`` and ``eval_ways``; on ``device``."""
    model = build_model(name, problem, ways=ways, hidden=hidden, seed=seed, device=device, backbone=backbone,
                        in_channels=in_channels, image_size=image_size)
    learner = make_learner(name, model, problem=problem, ways=max(ways, eval_ways or ways), seed=seed,
                           settings=settings)
    return learner.to(device)  # learners with parameters of their own (r2d2, attention) too

"""metalib.algorithms.registry: every registered learner keeps the learner contract, and adding one is one module.

The contract test is parametrised over the registry itself, so a learner registered later is checked without
editing this file: it trains, checkpoints and resumes into the same run, evaluates, and goes through the zoo's
save/load path (the two-process half of the contract is ``tests/test_distributed.py``, over the same registry).
"""
from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import metalib.pretrained as zoo
from metalib import REGISTRY, Recipe, evaluate, make_learner, meta_train
from metalib.algorithms import BuildContext, LearnerSpec, MetaLearner, NoSettings, Settings, register, setting, unregister
from metalib.errors import ArgumentError
from metalib.models import conv4, mlp
from metalib.pretrained import file_sha256, load_pretrained
from metalib.problems import REGRESSION
from metalib.train_cli import parse_args, run
from reference import contract_case, small_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.mark.filterwarnings("ignore:iMAML")  # two steps from an untrained start: iMAML says its assumptions fail
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_learner_trains_resumes_as_the_same_run_and_evaluates(name, tmp_path):
    learner, train, test = contract_case(name)
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    meta_train(learner, train, steps=2, meta_batch=2, checkpoint=tmp_path / "run.pt", checkpoint_every=1, progress=False)
    assert any(not torch.equal(before[k], v) for k, v in learner.state_dict().items()), "training moved nothing"
    resumed, _, _ = contract_case(name)
    meta_train(resumed, train, steps=3, meta_batch=2, checkpoint=tmp_path / "run.pt", progress=False)
    straight, _, _ = contract_case(name)
    meta_train(straight, train, steps=3, meta_batch=2, progress=False)
    for k, v in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), f"{name}: a resumed run differs from an uninterrupted one in {k}"
    result = evaluate(straight, test, n_tasks=4)
    assert result.n_tasks == 4 and torch.isfinite(result.scores).all()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_learner_saves_and_loads_through_the_zoo(name, tmp_path, monkeypatch):
    """A model file and manifest written as the exporter writes them load back as the same learner, built from the
    manifest's typed recipe (no command line involved)."""
    spec = REGISTRY[name]
    dataset = "omniglot" if "classification" in spec.problems else "sinusoid"
    problem = "classification" if dataset == "omniglot" else "regression"
    recipe = Recipe(f"{name}-toy", name, ways=5, shots=1, queries=1, steps=1, meta_batch=2, outer_lr=1e-3,
                    learner=small_settings(name, problem), dataset=dataset, hidden=4, seed=3)
    from metalib.algorithms import build_learner
    learner = build_learner(name, recipe.learner, problem=problem, ways=5, hidden=4, seed=3)
    with torch.no_grad():
        for p in learner.parameters():
            p.add_(0.01 * torch.randn_like(p))  # "trained": not what a fresh build gives
    monkeypatch.setattr(zoo, "ZOO", tmp_path)
    torch.save(learner.state_dict(), tmp_path / f"{recipe.name}.pt")
    manifest = {"name": recipe.name, "recipe": recipe.as_dict(), "evaluation": [],
                "sha256": file_sha256(tmp_path / f"{recipe.name}.pt")}
    (tmp_path / f"{recipe.name}.json").write_text(json.dumps(manifest))
    loaded = load_pretrained(recipe.name)
    assert loaded.name == learner.name and loaded.describe() == learner.eval().describe()
    for k, v in learner.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_settings_are_typed_validated_and_shared_names_mean_one_thing():
    maml_settings = REGISTRY["maml"].settings
    assert dataclasses.is_dataclass(maml_settings) and maml_settings.defaults("regression")["inner_lr"] == 0.01
    with pytest.raises(ArgumentError, match="inner_lr must be a finite number > 0, got nan"):
        maml_settings(inner_lr=float("nan"))
    with pytest.raises(ArgumentError, match="steps is not a setting of MAMLSettings"):
        make_learner("maml", conv4(5, hidden=4), steps=2)  # the factory's name, not the setting's
    with pytest.raises(TypeError):
        maml_settings(0.4)  # keyword-only
    kinds = {}
    for spec in REGISTRY.values():
        for k, f in spec.settings.options().items():
            assert kinds.setdefault(k, f.metadata["kind"]) is f.metadata["kind"], f"{k} has two kinds"
    assert make_learner("maml", conv4(5, hidden=4), inner_lr=0.3, inner_steps=2).inner.steps == 2


# ------------------------------------------------------------------- a toy learner: one module, one registration


class MeanPredictor(MetaLearner):
    """Predicts the mean of the support targets times a learned scale: the smallest learner of the contract."""

    problem = REGRESSION
    name = "toy"

    def __init__(self, scale: float):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def _predict(self, batch):
        return (self.scale * batch.support_y.mean(1, keepdim=True)).expand_as(batch.query_y)

    def meta_gradient(self, batch):
        loss = ((self._predict(batch) - batch.query_y) ** 2).mean()
        return self._grads(loss), {"loss": loss.item(), "mse": loss.item()}

    def evaluate_batch(self, batch, steps=None, batchnorm="transductive"):
        with torch.no_grad():
            return ((self._predict(batch) - batch.query_y) ** 2).flatten(1).mean(1)


@dataclass(frozen=True, kw_only=True)
class ToySettings(Settings):
    toy_scale: float = setting(0.5, "toy: where the learned scale starts", low=0)


@contextmanager
def toy_registered():
    """The toy learner in the registry for the duration (a user's project would register it once, on import)."""
    register(LearnerSpec("toy", ToySettings, lambda model, s, ctx: MeanPredictor(s.toy_scale),
                         "a toy: the support targets' mean, scaled", model="none", problems=("regression",),
                         problem_note="predicts numbers", inner_loop=False))
    try:
        yield
    finally:
        unregister("toy")


def test_a_learner_registered_in_one_module_is_trained_by_the_command_line(tmp_path, capsys):
    """Nothing outside this module changes: the command line offers --algorithm toy and derives --toy-scale."""
    with toy_registered():
        _toy_through_the_command_line(tmp_path, capsys)
    assert "toy" not in REGISTRY


def _toy_through_the_command_line(tmp_path, capsys) -> None:
    argv = ["--algorithm", "toy", "--dataset", "sinusoid", "--shots", "5", "--steps", "3", "--meta-batch", "2",
            "--val-tasks", "0", "--eval-tasks", "4", "--toy-scale", "0.25", "--no-progress",
            "--checkpoint", str(tmp_path / "toy.pt")]
    assert run(argv) == 0
    assert "test " in capsys.readouterr().out
    state = torch.load(tmp_path / "toy.pt", weights_only=False)
    assert state["run_settings"]["toy_scale"] == 0.25 and state["step"] == 3
    assert make_learner("toy", problem="regression").scale.item() == 0.5
    for bad, expected in ((["--algorithm", "maml", "--toy-scale", "1"], "--toy-scale is an option of toy, not of maml"),
                          (["--algorithm", "toy"], "toy predicts numbers: use --dataset sinusoid"),
                          (["--algorithm", "toy", "--dataset", "sinusoid", "--toy-scale", "-1"],
                           "--toy-scale must be a finite number >= 0, got -1.0")):
        with pytest.raises(SystemExit):
            parse_args(bad)
        assert expected in capsys.readouterr().err
    with pytest.raises(ArgumentError, match="toy builds its own networks"):
        make_learner("toy", mlp(), problem="regression")


def test_a_setting_of_another_kind_under_a_taken_name_is_refused():
    @dataclass(frozen=True, kw_only=True)
    class Clash(NoSettings):
        inner_lr: int = setting(1, "an integer where every other learner has a float")

    with pytest.raises(ValueError, match="setting 'inner_lr' of clash is a int, but of"):
        register(LearnerSpec("clash", Clash, lambda model, s, ctx: None, "clashes"))
    assert "clash" not in REGISTRY
    assert BuildContext().problem == "classification"


def test_each_learners_declared_optimizer_is_the_one_its_learner_makes():
    for name in REGISTRY:
        learner, _, _ = contract_case(name)
        assert type(learner.default_optimizer()).__name__.lower() == REGISTRY[name].optimizer, name

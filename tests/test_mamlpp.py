"""MAML++ and Proto-MAML: options of the one inner loop, checked in float64 against a naive per-task loop.

* MAML++ (per-step per-layer learned rates, per-step BatchNorm weights, the multi-step loss, second order): the
  meta-gradient of every meta-parameter equals a hand-written loop under every strategy, and central finite
  differences along a learned-rate direction; with every option off it is MAML's;
* the schedules (multi-step-loss weights, first-order warm-up) follow the outer step that training reports;
* Proto-MAML: the head starts as the ProtoNet of the support set (same predictions at 0 steps), and the
  meta-gradient equals a naive loop that builds that head by hand.
"""
from __future__ import annotations

import pytest
import torch

from metalib.algorithms import maml, mamlpp, protomaml
from metalib.algorithms.mamlpp import msl_weights
from metalib.errors import ArgumentError
from metalib.models import conv4
from reference import flat, meta_gradient_gap, naive_mamlpp_gradient, naive_protomaml_gradient, omniglot_like_batch


STRATEGIES = ["batched", "vmap", "loop", "threads"]


pytestmark = pytest.mark.usefixtures("float64_default", "two_or_more_threads")


def randomised_mamlpp(strategy: str, steps: int = 2):
    """A MAML++ learner whose learned rates and per-step BatchNorm values differ per step and layer (so a mix-up of
    steps or names shows), with the multi-step loss on and second-order meta-gradients."""
    model = conv4(5, hidden=8, seed=0).double()
    learner = mamlpp(model, inner_lr=0.3, steps=steps, strategy=strategy, msl_steps=10)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in learner.inner_lrs.values():
            p.copy_(torch.rand(p.shape, generator=g) * 0.4 + 0.1)
        for p in learner.step_params.values():
            p.add_(torch.rand(p.shape, generator=g) * 0.5 - 0.25)
    learner._step = 0
    cfg = learner.training_config(0)
    assert cfg.step_weights == msl_weights(steps, 0.0) and not cfg.first_order
    return learner


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mamlpp_meta_gradient_equals_a_naive_loop_with_every_option_on(strategy):
    learner = randomised_mamlpp(strategy)
    weights = learner.training_config(0).step_weights
    batch = omniglot_like_batch(tasks=3, queries=2)
    grads, _ = learner.meta_gradient(batch)
    expected = naive_mamlpp_gradient(learner, batch, weights)
    got = [grads[k] for k in learner.meta_parameters()]
    assert {k.split(".")[0] for k in grads} >= {"inner_lr", "features", "head"}
    diff = (flat(got) - flat(expected)).abs().max().item()
    assert diff < 1e-10, f"{strategy}: max |core - naive| = {diff:.3e}"
    lr_grads = flat([grads[k] for k in grads if k.startswith("inner_lr.")])
    bn_grads = flat([grads[k] for k in learner.inner.per_step])
    assert lr_grads.abs().max() > 1e-4 and bn_grads.abs().max() > 1e-4  # both learned, not inert


def test_mamlpp_learned_rate_gradient_matches_finite_differences():
    learner = randomised_mamlpp("batched")
    batch = omniglot_like_batch(tasks=2, queries=2)
    name = "inner_lr.features.4.weight"
    direction = torch.tensor([1.0, -0.5])
    grads, _ = learner.meta_gradient(batch)
    lr = learner.meta_parameters()[name]

    def loss_at(eps: float) -> float:
        with torch.no_grad():
            lr.add_(eps * direction)
        value = learner.query_losses(batch, learner.training_config(0))[0].mean().item()
        with torch.no_grad():
            lr.sub_(eps * direction)
        return value
    eps = 1e-5
    fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = (grads[name] * direction).sum().item()
    assert abs(fd - analytic) < 1e-6 * max(1.0, abs(fd)) and abs(fd) > 1e-5


def test_mamlpp_with_its_options_off_is_maml():
    batch = omniglot_like_batch(tasks=3, queries=2)
    reference = maml(conv4(5, hidden=8, seed=0).double(), inner_lr=0.3, steps=2, strategy="batched")
    plus = mamlpp(conv4(5, hidden=8, seed=0).double(), inner_lr=0.3, steps=2, per_step_bn=False, strategy="batched")
    expected, _ = reference.meta_gradient(batch)
    got, _ = plus.meta_gradient(batch)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-12, atol=1e-12)
    assert set(got) - set(expected) == {f"inner_lr.{k}" for k in expected}


def test_multi_step_loss_weights_anneal_to_the_last_step():
    assert msl_weights(5, 0.0) == pytest.approx((0.2,) * 5)
    for t in (0.0, 0.3, 1.0, 2.0):
        assert sum(msl_weights(5, t)) == pytest.approx(1.0)
    assert msl_weights(5, 1.0)[:4] == pytest.approx((0.006,) * 4) and msl_weights(5, 1.0)[4] == pytest.approx(0.976)
    assert msl_weights(5, 0.5)[0] == pytest.approx(0.1)


def test_mamlpp_schedules_follow_the_outer_step_that_training_reports(monkeypatch):
    from metalib.train import meta_train
    learner = mamlpp(conv4(5, hidden=4, seed=0).double(), steps=2, msl_steps=2, first_order_steps=3)
    assert learner.training_config(0).first_order and learner.training_config(2).first_order
    assert not learner.training_config(3).first_order
    assert learner.training_config(1).step_weights == msl_weights(2, 0.5)
    assert learner.training_config(2).step_weights is None  # the last step's loss alone from then on
    seen = []
    real = learner.training_config
    monkeypatch.setattr(learner, "training_config", lambda step: seen.append(step) or real(step))

    class Tasks:
        def batch(self, idx):
            return omniglot_like_batch(tasks=len(idx), queries=1, seed=idx[0])
    meta_train(learner, Tasks(), steps=4, meta_batch=2, val_every=10)
    assert seen == [0, 1, 2, 3]


def test_mamlpp_rejects_what_it_cannot_do():
    from metalib.models import mlp
    with pytest.raises(ArgumentError, match="TaskBatchNorm"):
        mamlpp(mlp(seed=0))
    with pytest.raises(ArgumentError, match="at least one inner step"):
        mamlpp(conv4(5, hidden=4), steps=0)
    mamlpp(mlp(seed=0), per_step_bn=False, problem="regression")  # the other options need no BatchNorm


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_protomaml_meta_gradient_equals_a_naive_loop(strategy, first_order):
    model = conv4(5, hidden=8, seed=2).double()
    learner = protomaml(model, inner_lr=0.2, steps=2, strategy=strategy, first_order=first_order)
    batch = omniglot_like_batch(tasks=3, shots=2, queries=2)
    diff = meta_gradient_gap(learner, batch, naive_protomaml_gradient(model, batch, 2, 0.2, first_order))
    assert diff < 1e-10, f"{strategy}: max |core - naive| = {diff:.3e}"
    assert learner.meta_gradient(batch)[0]["head.weight"].abs().max() == 0  # the model's own head is only a shape


def test_protomaml_starts_as_the_protonet_of_the_support_set():
    model = conv4(5, hidden=8, seed=3).double()
    learner = protomaml(model, steps=0, strategy="loop")
    batch = omniglot_like_batch(tasks=2, shots=3, queries=2)
    params = learner.adapted_params(batch, steps=0)
    for i in range(2):
        zs = model.features(batch.support_x[i])
        zq = model.features(batch.query_x[i])
        protos = torch.stack([zs[batch.support_y[i] == c].mean(0) for c in range(5)])
        logits = zq @ params["head.weight"][i].T + params["head.bias"][i]
        expected = -((zq[:, None] - protos[None]) ** 2).sum(-1)  # ProtoNet's logits, up to a per-query constant
        torch.testing.assert_close(logits.log_softmax(-1), expected.log_softmax(-1), rtol=1e-9, atol=1e-9)


def test_train_cli_builds_mamlpp_and_protomaml_with_their_settings():
    from metalib.train_cli import parse_args
    from metalib.training_run import learner_from_options, run_settings
    _, a = parse_args(["--algorithm", "mamlpp", "--inner-steps", "3", "--msl-steps", "50", "--first-order-steps", "20"])
    learner = learner_from_options(a, torch.device("cpu"))
    assert (learner.name, learner.inner.steps, learner.msl_steps, learner.first_order_steps) == ("mamlpp", 3, 50, 20)
    assert run_settings(a)["msl_steps"] == 50 and "msl_steps" not in run_settings(parse_args([])[1])
    _, a = parse_args(["--algorithm", "protomaml"])
    assert learner_from_options(a, torch.device("cpu")).inner.head_init == "prototypes"
    with pytest.raises(SystemExit):
        parse_args(["--algorithm", "maml", "--msl-steps", "5"])


def test_mamlpp_defaults_are_the_papers_schedules_as_shares_of_the_run():
    """The defaults left the multi-step loss and the first-order phase off; the paper anneals the multi-step loss
    over its first 10 of 150 epochs and trains first-order for the first 50."""
    learner = mamlpp(conv4(5, hidden=4, seed=0).double())
    assert learner.inner.steps == 5 and learner.inner.lr == 0.1
    assert learner.step_params and all(v.shape[0] == 5 for v in learner.step_params.values())  # one set per step
    learner.set_training_step(0, 1500)
    assert learner.schedule() == (100, 500)
    assert learner.training_config(99).step_weights is not None and learner.training_config(100).step_weights is None
    assert learner.training_config(499).first_order and not learner.training_config(500).first_order
    assert mamlpp(conv4(5, hidden=4), msl_steps=0, first_order_steps=0).schedule(1500) == (0, 0)
    with pytest.raises(ArgumentError, match="msl_steps must be an integer >= 0 or None"):
        mamlpp(conv4(5, hidden=4), msl_steps=-1)


def test_describe_says_which_weights_each_inner_loop_adapts():
    """MAML++ adapts every weight but its per-step BatchNorm ones; it used to be reported as adapting the head."""
    from metalib.algorithms import anil

    assert mamlpp(conv4(5, hidden=8)).describe()["adapted"] == "all but the per-step BatchNorm"
    assert mamlpp(conv4(5, hidden=8), per_step_bn=False).describe()["adapted"] == "all"
    assert maml(conv4(5, hidden=8)).describe()["adapted"] == "all"
    assert anil(conv4(5, hidden=8)).describe()["adapted"] == "head"

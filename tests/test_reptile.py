"""metalib.algorithms.reptile: Reptile's inner minibatches (``InnerConfig.support_batches``), checked in float64.

Nichol et al. adapt on a *different* minibatch at every inner step: the inner products between the gradients
of different minibatches are what Reptile's update adds to joint training. ``support_minibatch`` gives step
``i`` the ``i % n``-th class-balanced slice; every engine that supports it must match a naive per-task loop.
"""
from __future__ import annotations

import pytest
import torch

from metalib.algorithms import reptile
from metalib.errors import ArgumentError
from metalib.inner import InnerConfig, adapt
from metalib.inner.core import support_minibatch
from metalib.models import conv4
from metalib.tasks import TaskBatch
from reference import naive_reptile_adapt

pytestmark = pytest.mark.usefixtures("float64_default")


def batch_of(tasks=3, ways=3, shots=4, queries=2, shot_major=False, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    order = torch.arange(ways).repeat(shots) if shot_major else torch.arange(ways).repeat_interleave(shots)
    return TaskBatch(support_x=torch.rand(tasks, ways * shots, 1, 28, 28, generator=g),
                     support_y=order.expand(tasks, -1).clone(),
                     query_x=torch.rand(tasks, ways * queries, 1, 28, 28, generator=g),
                     query_y=torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).clone())


@pytest.mark.parametrize("shot_major", [False, True])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_minibatches_are_disjoint_class_balanced_and_cover_the_support_set(n, shot_major):
    b = batch_of(shots=4, shot_major=shot_major)
    ids = torch.arange(b.support_y.numel()).reshape(b.support_y.shape)  # which example ended up where
    seen = []
    for step in range(n):
        picked, y = support_minibatch(ids, b.support_y, step, n)
        assert picked.shape == (3, 12 // n)
        assert all(torch.equal(torch.bincount(row, minlength=3), torch.full((3,), 4 // n)) for row in y)
        assert torch.equal(b.support_y.gather(1, picked - ids[:, :1]), y)  # labels travel with their examples
        seen.append(picked)
    assert torch.equal(torch.cat(seen, 1).sort(1).values, ids)  # each example exactly once per n steps
    again, _ = support_minibatch(ids, b.support_y, n, n)  # step n starts the cycle again
    assert torch.equal(again, seen[0])


def test_more_minibatches_than_shots_is_refused():
    b = batch_of(shots=2)
    with pytest.raises(ArgumentError, match="shots per class"):
        support_minibatch(b.support_x, b.support_y, 0, 3)
    with pytest.raises(ArgumentError, match="support_batches"):
        InnerConfig(support_batches=0)


@pytest.mark.parametrize("strategy", ["batched", "loop", "threads"])
def test_reptile_with_minibatches_adapts_like_a_naive_loop(strategy):
    model = conv4(3, hidden=8, seed=1).double()
    batch = batch_of(shots=4, shot_major=True)
    learner = reptile(model, inner_lr=0.3, steps=3, inner_batches=2, strategy=strategy)  # 3 steps: the cycle wraps
    params = {k: v.detach() for k, v in model.named_parameters()}
    got = adapt(model, params, batch, learner.inner)
    want = naive_reptile_adapt(model, batch, steps=3, lr=0.3, n=2)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
    whole = adapt(model, params, batch, InnerConfig(steps=3, lr=0.3, first_order=True))
    assert (got["head.weight"] - whole["head.weight"]).abs().max() > 1e-6  # the minibatches change the result


def test_reptile_minibatches_train_only_test_time_adapts_on_the_whole_support_set():
    model = conv4(3, hidden=8, seed=1).double()
    learner = reptile(model, inner_lr=0.3, steps=2, inner_batches=2)
    one_shot = batch_of(shots=1)
    for mode in ("transductive", "inductive"):
        scores = learner.evaluate_batch(one_shot, steps=2, batchnorm=mode)  # 1 shot: no minibatches possible
        assert scores.shape == (3,) and ((scores >= 0) & (scores <= 1)).all()
    grads, _ = learner.meta_gradient(batch_of(shots=2))
    assert all(torch.isfinite(g).all() for g in grads.values())


def test_vmap_engine_refuses_minibatches_with_a_clear_error():
    model = conv4(3, hidden=8, seed=1).double()
    learner = reptile(model, inner_lr=0.3, steps=2, inner_batches=2, strategy="vmap")
    with pytest.raises(ArgumentError, match="vmap"):
        adapt(model, dict(model.named_parameters()), batch_of(shots=2), learner.inner)


def test_train_cli_checks_inner_batches_before_training():
    from metalib.train_cli import parse_args
    from metalib.training_run import learner_from_options, run_settings
    _, a = parse_args(["--algorithm", "reptile", "--shots", "5", "--inner-batches", "5"])
    assert learner_from_options(a, torch.device("cpu")).inner.support_batches == 5
    assert run_settings(a)["inner_batches"] == 5 and "inner_batches" not in run_settings(parse_args([])[1])
    for bad in (["--algorithm", "maml", "--inner-batches", "2"], ["--algorithm", "reptile", "--inner-batches", "3"]):
        with pytest.raises(SystemExit):
            parse_args(bad)

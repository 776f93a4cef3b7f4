"""Inductive BatchNorm: each query is predicted from the support set and itself alone.

* the batched inductive forward equals a hand loop over (task, query) batches ``[support; query]``, in any chunking;
* a query's inductive prediction ignores the other queries (the transductive one does not);
* every learner family evaluates in both modes and the result records the mode; models without batch statistics
  give the same numbers in both.
"""
from __future__ import annotations

import pytest
import torch

from metalib.algorithms import maml, mamlpp, protonet, r2d2, reptile
from metalib.errors import ArgumentError
from metalib.evaluate import evaluate
from metalib.inner import forward_adapted, forward_inductive, per_query, single_query_episodes
from metalib.models import conv4, mlp
from metalib.tasks import TaskBatch

from reference import omniglot_like_batch, sine_batch

pytestmark = pytest.mark.usefixtures("float64_default")


@pytest.mark.parametrize("rows", [None, 1, 7, 256])
def test_inductive_forward_equals_a_loop_over_support_plus_one_query(rows):
    model = conv4(5, hidden=8, seed=0).double()
    batch = omniglot_like_batch(tasks=3, queries=2)
    adapted = maml(model, steps=1).adapted_params(batch)  # per-task parameters [B, ...]
    got = forward_inductive(model, adapted, batch.support_x, batch.query_x, rows=rows)
    for b in range(3):
        for j in range(batch.query_x.shape[1]):
            x = torch.cat([batch.support_x[b], batch.query_x[b, j:j + 1]])[None]
            expected = forward_adapted(model, {k: v[b:b + 1] for k, v in adapted.items()}, x)[0, -1]
            torch.testing.assert_close(got[b, j], expected, rtol=1e-10, atol=1e-10)


def test_inductive_prediction_ignores_the_other_queries():
    model = conv4(5, hidden=8, seed=1).double()
    batch = omniglot_like_batch(tasks=2, queries=2)
    changed = TaskBatch(batch.support_x, batch.support_y, batch.query_x.clone(), batch.query_y)
    changed.query_x[:, 1:] = torch.rand_like(changed.query_x[:, 1:]) * 3
    params = dict(model.named_parameters())
    with torch.no_grad():
        a = forward_inductive(model, params, batch.support_x, batch.query_x)[:, 0]
        b = forward_inductive(model, params, changed.support_x, changed.query_x)[:, 0]
        ta = forward_adapted(model, params, batch.query_x)[:, 0]
        tb = forward_adapted(model, params, changed.query_x)[:, 0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (ta - tb).abs().max() > 1e-3  # transductive: the other queries move query 0's prediction


def test_single_query_episodes_keep_each_task_support_and_order():
    batch = omniglot_like_batch(tasks=2, queries=3)
    episodes = single_query_episodes(batch)
    assert episodes.query_x.shape == (2 * 15, 1, 1, 28, 28) and episodes.support_x.shape[0] == 30
    torch.testing.assert_close(episodes.query_x[15 + 4, 0], batch.query_x[1, 4])
    torch.testing.assert_close(episodes.support_x[15 + 4], batch.support_x[1])
    assert episodes.query_y[15 + 4, 0] == batch.query_y[1, 4]


def test_protonet_inductive_logits_are_each_query_in_its_own_episode():
    learner = protonet(conv4(0, hidden=8, seed=2).double())
    batch = omniglot_like_batch(tasks=2, shots=2, queries=2)
    with torch.no_grad():
        got = per_query(learner.logits, batch, rows=3)
        for b in range(2):
            for j in range(10):
                one = TaskBatch(batch.support_x[b:b + 1], batch.support_y[b:b + 1], batch.query_x[b:b + 1, j:j + 1],
                                batch.query_y[b:b + 1, j:j + 1])
                torch.testing.assert_close(got[b, j], learner.logits(one)[0, 0], rtol=1e-10, atol=1e-10)


class _Tasks:
    def __init__(self, make):
        self.make = make

    def batch(self, idx):
        return self.make(len(idx), idx[0])


@pytest.mark.parametrize("name", ["maml", "mamlpp", "reptile", "protonet", "r2d2"])
def test_every_family_evaluates_in_both_modes_and_records_it(name):
    model = conv4(0 if name in ("protonet", "r2d2") else 5, hidden=8, seed=0).double()
    learner = {"maml": lambda: maml(model), "mamlpp": lambda: mamlpp(model, steps=2), "reptile": lambda: reptile(model),
               "protonet": lambda: protonet(model), "r2d2": lambda: r2d2(model)}[name]()
    tasks = _Tasks(lambda n, seed: omniglot_like_batch(tasks=n, queries=2, seed=seed))
    results = {mode: evaluate(learner, tasks, n_tasks=4, batch_size=2, batchnorm=mode)
               for mode in ("transductive", "inductive")}
    assert [r.settings["batchnorm"] for r in results.values()] == ["transductive", "inductive"]
    assert "batchnorm=inductive" in str(results["inductive"])
    batch = tasks.batch([0, 1])
    with torch.no_grad():
        if name in ("protonet", "r2d2"):
            out = per_query(learner.logits, batch)
        else:
            adapted = learner.adapted_params(batch) if name != "reptile" else \
                __import__("metalib").inner.adapt(model, dict(model.named_parameters()), batch, learner.inner)
            out = forward_inductive(model, adapted, batch.support_x, batch.query_x)
    expected = (out.argmax(-1) == batch.query_y).double().mean(1)
    torch.testing.assert_close(results["inductive"].scores[:2], expected)
    with pytest.raises(ArgumentError, match="batchnorm must be one of"):
        evaluate(learner, tasks, n_tasks=2, batchnorm="running")


def test_without_batch_statistics_both_modes_agree():
    learner = maml(mlp(seed=0).double(), inner_lr=0.01, steps=2, problem="regression")
    tasks = _Tasks(lambda n, seed: sine_batch(tasks=n, seed=seed))
    a = evaluate(learner, tasks, n_tasks=4, batch_size=2)
    b = evaluate(learner, tasks, n_tasks=4, batch_size=2, batchnorm="inductive")
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-10, atol=1e-12)


def test_train_cli_evaluates_inductively_on_request():
    from metalib.train_cli import parse_args
    assert parse_args(["--eval-batchnorm", "inductive"])[1].eval_batchnorm == "inductive"
    assert parse_args([])[1].eval_batchnorm == "transductive"
    with pytest.raises(SystemExit):
        parse_args(["--eval-batchnorm", "running"])

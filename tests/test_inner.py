"""The inner-loop core and the algorithms built on it, checked in float64.

* second-order meta-gradient of the real conv4 (with BatchNorm) vs central finite differences,
  for every strategy (batched, vmap, loop, threads);
* every algorithm's batched meta-gradient vs a naive per-task loop written with
  ``torch.autograd.grad(create_graph=True)``, to ~1e-10;
* first-order MAML == query gradient at the adapted weights; ANIL keeps the body fixed;
  Reptile moves toward the adapted weights; ProtoNets against a hand computation.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metalib.inner import adapt
from metalib.algorithms import anil, fomaml, maml, matching, metasgd, protonet, r2d2, relation, reptile
from metalib.models import conv4, mlp
from metalib.tasks import TaskBatch
from reference import directional_derivatives, flat, naive_meta_gradient, omniglot_like_batch, sine_batch


pytestmark = pytest.mark.usefixtures("float64_default")


def model_grads(grads: dict) -> dict:
    """Meta-gradients are keyed by the model's parameter names (learned inner rates by 'inner_lr.<name>')."""
    return {k: v for k, v in grads.items() if not k.startswith("inner_lr.")}


@pytest.mark.parametrize("strategy", ["batched", "vmap", "loop", "threads"])
def test_conv4_second_order_meta_gradient_matches_finite_differences(strategy, two_or_more_threads):
    model = conv4(5, seed=0).double()
    batch = omniglot_like_batch(tasks=3, queries=5)
    learner = maml(model, inner_lr=0.4, steps=2, strategy=strategy)
    grads = model_grads(learner.meta_gradient(batch)[0])
    params = dict(model.named_parameters())
    numeric, analytic, direction = directional_derivatives(learner, model, batch, grads)
    assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-8)
    # the first-order gradient is measurably different, so the test can tell them apart
    fo = model_grads(fomaml(model, inner_lr=0.4, steps=2, strategy=strategy).meta_gradient(batch)[0])
    fo_dir = sum((fo[k] * direction[k]).sum() for k in params).item()
    assert abs(fo_dir - analytic) > 1e-4 * abs(analytic)


CASES = {
    "maml": dict(make=lambda m, s: maml(m, inner_lr=0.4, steps=2, strategy=s), first_order=False, adapt=None),
    "fomaml": dict(make=lambda m, s: fomaml(m, inner_lr=0.4, steps=2, strategy=s), first_order=True, adapt=None),
    "metasgd": dict(make=lambda m, s: metasgd(m, inner_lr=0.4, steps=2, strategy=s), first_order=False, adapt=None),
    "anil": dict(make=lambda m, s: anil(m, inner_lr=0.4, steps=2, strategy=s), first_order=False, adapt="head"),
}


@pytest.mark.parametrize("strategy", ["batched", "vmap", "loop", "threads"])
@pytest.mark.parametrize("algo", sorted(CASES))
def test_batched_core_equals_naive_loop(algo, strategy, two_or_more_threads):
    case = CASES[algo]
    model = conv4(5, hidden=32, seed=0).double()
    learner = case["make"](model, strategy)
    if algo == "metasgd":  # learned rates that differ per entry, so a mix-up of names would show
        with torch.no_grad():
            for p in learner.inner_lrs.values():
                p.uniform_(0.1, 0.6, generator=torch.Generator().manual_seed(3))
    batch = omniglot_like_batch(tasks=3)
    grads, _ = learner.meta_gradient(batch)
    adapt = [k for k, _ in model.named_parameters() if k.startswith("head.")] if case["adapt"] else None
    lrs = learner.lrs()
    expected = naive_meta_gradient(model, batch, steps=2, lr=0.4, first_order=case["first_order"], adapt=adapt, lrs=lrs)
    got = [grads[k] for k in learner.meta_parameters()]
    assert len(got) == len(expected)
    diff = (flat(got) - flat(expected)).abs().max().item()
    assert diff < 1e-10, f"{algo}/{strategy}: max |batched - naive| = {diff:.3e}"
    assert flat(expected).abs().max() > 1e-3  # a non-trivial gradient


def test_regression_core_equals_naive_loop():
    model = mlp(seed=0).double()
    batch = sine_batch()
    grads = model_grads(maml(model, inner_lr=0.01, steps=3, problem="regression", strategy="vmap").meta_gradient(batch)[0])
    expected = naive_meta_gradient(model, batch, steps=3, lr=0.01, loss=F.mse_loss)
    diff = (flat(grads.values()) - flat(expected)).abs().max().item()
    assert diff < 1e-10


@pytest.mark.parametrize("strategy", ["batched", "vmap", "loop", "threads"])
def test_first_order_gradient_is_query_gradient_at_adapted_weights(strategy, two_or_more_threads):
    model = conv4(5, hidden=32, seed=1).double()
    learner = fomaml(model, inner_lr=0.4, steps=3, strategy=strategy)
    batch = omniglot_like_batch(tasks=2, seed=5)
    grads = model_grads(learner.meta_gradient(batch)[0])
    adapted = learner.adapted_params(batch)
    expected = {k: torch.zeros_like(v) for k, v in grads.items()}
    for i in range(2):
        phi = {k: v[i].clone().requires_grad_() for k, v in adapted.items()}
        loss = F.cross_entropy(functional_call(model, phi, (batch.query_x[i],)), batch.query_y[i])
        for k, g in zip(phi, torch.autograd.grad(loss, list(phi.values()))):
            expected[k] += g / 2
    for k in grads:
        torch.testing.assert_close(grads[k], expected[k], rtol=1e-10, atol=1e-12)


def test_anil_leaves_body_unchanged_and_moves_head():
    model = conv4(5, seed=2).double()
    learner = anil(model, inner_lr=0.4, steps=3)
    batch = omniglot_like_batch(tasks=2)
    adapted = learner.adapted_params(batch)
    for k, p in model.named_parameters():
        moved = (adapted[k] - p.detach()).abs().max().item()
        if k.startswith("head."):
            assert moved > 1e-4, k
        else:
            assert moved == 0.0, k


def test_reptile_update_points_toward_adapted_weights():
    model = conv4(5, hidden=32, seed=3).double()
    learner = reptile(model, inner_lr=0.1, steps=3)
    batch = omniglot_like_batch(tasks=3)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    grads = model_grads(learner.meta_gradient(batch)[0])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for k, p in model.named_parameters():
        p.grad = grads[k]
    opt.step()
    fast = adapt(model, before, batch, learner.inner)
    for k, p in model.named_parameters():
        toward = fast[k].mean(0) - before[k]
        torch.testing.assert_close(p.detach() - before[k], 0.5 * toward, rtol=1e-10, atol=1e-12)
    moved = flat([p.detach() - before[k] for k, p in model.named_parameters()])
    assert moved.norm() > 0


def test_protonet_matches_hand_computation():
    model = conv4(0, seed=4).double()
    learner = protonet(model)
    batch = omniglot_like_batch(tasks=2, shots=3, queries=2)
    logits = learner.logits(batch)
    for i in range(2):
        z = model(torch.cat([batch.support_x[i], batch.query_x[i]]))
        zs, zq = z[:15], z[15:]
        protos = torch.stack([zs[batch.support_y[i] == c].mean(0) for c in range(5)])
        expected = -((zq[:, None, :] - protos[None]) ** 2).sum(-1)
        torch.testing.assert_close(logits[i], expected, rtol=1e-9, atol=1e-9)
    grads, metrics = learner.meta_gradient(batch)
    assert set(model_grads(grads)) == {k for k, _ in model.named_parameters()}
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_unknown_adapt_names_are_rejected():
    from metalib.inner import InnerConfig
    model = mlp(seed=0)
    with pytest.raises(ValueError, match="unknown parameters"):
        adapt(model, dict(model.named_parameters()), TaskBatch(*[torch.zeros(1, 5, 1)] * 4),
              InnerConfig(adapt_only=("nope",)))


def test_auto_strategy_follows_the_measurements():
    from metalib.inner import resolve_strategy
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_strategy("auto", cpu, conv4(5)) == "threads"  # grouped convs lose on CPU (BENCHMARKS.md)
    assert resolve_strategy("auto", cpu, mlp()) == "batched"
    assert resolve_strategy("auto", gpu, conv4(5)) == "batched"
    assert resolve_strategy("auto", gpu, torch.nn.Linear(1, 1)) == "vmap"
    with pytest.raises(ValueError, match="forward_tasks"):
        resolve_strategy("batched", cpu, torch.nn.Linear(1, 1))


@pytest.mark.parametrize("tasks", [1, 3])
def test_conv4_task_forward_layouts_agree_with_the_module(tasks):
    """forward_tasks (channels-last + fused BatchNorm, or NCHW + unfused for second-order passes)
    computes what the plain module computes, values and gradients."""
    model = conv4(5, seed=0).double()
    batch = omniglot_like_batch(tasks=tasks, queries=3)
    params = dict(model.named_parameters())
    expected = torch.stack([model(x) for x in batch.query_x])
    for second_order in (False, True):
        out = model.forward_tasks(params, batch.query_x, second_order)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
        got = torch.autograd.grad(out.square().sum(), list(params.values()))
        want = torch.autograd.grad(expected.square().sum(), list(params.values()), retain_graph=True)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)  # conv biases: ~0 (BatchNorm cancels them)


def test_threads_strategy_is_deterministic_and_leaves_thread_settings_alone(two_or_more_threads):
    import threading
    model = conv4(5, hidden=16, seed=0).double()
    batch = omniglot_like_batch(tasks=5)
    threads = torch.get_num_threads()
    first = maml(model, steps=2, strategy="threads").meta_gradient(batch)[0]
    second = maml(model, steps=2, strategy="threads").meta_gradient(batch)[0]
    for k in first:
        assert torch.equal(first[k], second[k]), k
    assert torch.get_num_threads() == threads  # workers run one intra-op thread each, the caller keeps its own
    seen = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [threads]  # and threads started later get the caller's setting, not the workers'
    from metalib.inner.workers import pool as _pool
    assert set(_pool(threads).map(lambda _: torch.get_num_threads(), range(threads))) == {1}


def test_threads_strategy_evaluates_and_reports_worker_errors(two_or_more_threads):
    model = conv4(5, hidden=16, seed=0).double()
    batch = omniglot_like_batch(tasks=4)
    scores = {s: maml(model, steps=2, strategy=s).evaluate_batch(batch) for s in ("threads", "loop")}
    torch.testing.assert_close(scores["threads"], scores["loop"])
    bad = TaskBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y + 7)  # labels out of range
    with pytest.raises((IndexError, RuntimeError)):
        maml(model, steps=1, strategy="threads").meta_gradient(bad)


def test_threads_strategy_needs_a_thread_safe_forward():
    from metalib.inner import resolve_strategy
    with pytest.raises(ValueError, match="forward_tasks"):
        resolve_strategy("threads", torch.device("cpu"), torch.nn.Linear(1, 1))


@pytest.mark.parametrize("strategy", ["loop", "threads"])
def test_per_task_gradients_contract_any_weighting_of_the_losses(strategy, two_or_more_threads):
    """loop/threads take each task's gradient in the forward pass; the backward must still be exact for
    any incoming gradient of the per-task losses, not only the mean."""
    from metalib.inner import InnerConfig, task_losses
    model = conv4(5, hidden=16, seed=0).double()
    batch = omniglot_like_batch(tasks=4)
    params = dict(model.named_parameters())
    weights = torch.tensor([0.1, -2.0, 0.7, 3.0])
    grads = {}
    for s in (strategy, "batched"):
        losses, _ = task_losses(model, params, batch,
                                InnerConfig(steps=2, lr=0.4, strategy=s))
        grads[s] = torch.autograd.grad((weights * losses).sum(), list(params.values()))
    assert (flat(grads[strategy]) - flat(grads["batched"])).abs().max() < 1e-10


def _meta_gradient_norm_in_child(queue):
    model = conv4(5, hidden=8, seed=0).double()
    grads, _ = maml(model, steps=1, strategy="threads").meta_gradient(omniglot_like_batch(tasks=3))
    queue.put(flat(grads.values()).norm().item())


def test_threads_strategy_works_in_a_forked_child(two_or_more_threads):
    """A forked process (e.g. a data-loader worker) inherits the worker pools but not their threads."""
    import multiprocessing
    model = conv4(5, hidden=8, seed=0).double()
    grads, _ = maml(model, steps=1, strategy="threads").meta_gradient(omniglot_like_batch(tasks=3))  # pools exist now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_meta_gradient_norm_in_child, args=(queue,))
    child.start()
    child.join(timeout=120)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    # the child's own traceback, if any, is in this test's captured stderr
    assert not hung and child.exitcode == 0, (
        "the forked child hung (killed after 120 s)" if hung else f"the forked child exited with {child.exitcode}")
    assert queue.get(timeout=5) == pytest.approx(flat(grads.values()).norm().item(), rel=1e-12)


def test_a_user_defined_problem_gives_the_same_losses_under_every_strategy():
    """A problem is one per-sample loss and score, reduced per task in one place: no engine may pick its
    own loss (the batched engine once chose it by the problem's name and computed MSE for an L1 problem)."""
    from metalib.inner import InnerConfig, task_losses
    from metalib.problems import Problem

    def l1(out, y):
        return (out - y).abs().flatten(1).mean(1)

    problem = Problem("l1", l1, l1, "mae", higher_is_better=False)
    model = mlp(seed=0)
    batch = sine_batch(tasks=4)
    params = dict(model.named_parameters())
    losses = {s: task_losses(model, params, batch, InnerConfig(steps=2, lr=0.01, strategy=s, problem=problem))
              for s in ("batched", "vmap", "loop")}
    naive = []
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        fast = dict(params)
        for _ in range(2):
            g = torch.autograd.grad((functional_call(model, fast, (sx,)) - sy).abs().mean(), list(fast.values()))
            fast = {k: w - 0.01 * gk for (k, w), gk in zip(fast.items(), g)}
        naive.append((functional_call(model, fast, (qx,)) - qy).abs().mean())
    for s, (loss, score) in losses.items():
        torch.testing.assert_close(loss, torch.stack(naive), rtol=1e-10, atol=1e-12, msg=s)
        torch.testing.assert_close(score, torch.stack(naive).detach(), rtol=1e-10, atol=1e-12, msg=s)


@pytest.mark.parametrize("make", [protonet, r2d2, matching, relation], ids=["protonet", "r2d2", "matching", "relation"])
def test_embedding_learners_on_worker_threads_give_the_single_pass_meta_gradient(make, two_or_more_threads):
    """On a CPU ProtoNets and R2D2 run their tasks over worker threads (PerTaskGradients), as the inner-loop
    learners do; the meta-gradient is the one pass of grouped convolutions' (one thread takes that path)."""
    learner = make(conv4(0, hidden=8, seed=0, pooled_blocks=2 if make is relation else 4).double())
    batch = omniglot_like_batch(tasks=4, queries=3)
    assert learner._threaded(batch)
    threaded, metrics = learner.meta_gradient(batch)
    torch.set_num_threads(1)
    assert not learner._threaded(batch)
    single, reference = learner.meta_gradient(batch)
    assert (flat(list(threaded.values())) - flat(list(single.values()))).abs().max() < 1e-12
    assert metrics == pytest.approx(reference) and flat(list(single.values())).abs().max() > 1e-3


@pytest.mark.parametrize("make", [protonet, r2d2, matching], ids=["protonet", "r2d2", "matching"])
def test_embedding_learners_test_task_by_task_on_a_cpu_as_one_grouped_pass(make):
    """At test time (no autograd) `embed_episode` embeds each task with plain convolutions, which a CPU runs about 3x
    faster than one grouped pass over the batch (benchmarks/evaluation.py); the logits are the grouped pass's."""
    learner = make(conv4(0, hidden=8, seed=0).double())
    batch = omniglot_like_batch(tasks=4, queries=3)
    model, tasks_per_pass = learner.model, []
    original = model.forward_tasks

    def counting(params, x, *rest):
        tasks_per_pass.append(x.shape[0])
        return original(params, x, *rest)
    model.forward_tasks = counting
    try:
        with torch.no_grad():
            per_task = learner.query_outputs(batch)
        assert tasks_per_pass == [1, 1, 1, 1]
        tasks_per_pass.clear()
        grouped = learner.logits(batch).detach()  # with autograd on: the grouped pass, as training takes it
        assert tasks_per_pass == [4]
    finally:
        del model.forward_tasks
    torch.testing.assert_close(per_task, grouped, rtol=1e-12, atol=1e-12)

"""metalib.algorithms.gradient: the zeroing trick (Kao et al., 2022), ``zero_head=True``: every task's linear
head starts at zero.

Checked in float64 against a naive per-task loop that zeroes the head by hand (every strategy, first and second
order), against central finite differences, at 0 steps (every class equally likely), and through ``train_cli``
and the recipes (the option enters a run's settings only when set, and is refused where there is no linear head).
"""
from __future__ import annotations

import pytest
import torch

from metalib.algorithms import anil, fomaml, maml, metasgd
from metalib.errors import ArgumentError
from metalib.models import conv4
from reference import flat, meta_gradient_gap, naive_zero_head_gradient, naive_zero_head_loss, omniglot_like_batch


STRATEGIES = ["batched", "vmap", "loop", "threads"]


pytestmark = pytest.mark.usefixtures("float64_default", "two_or_more_threads")


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_zero_head_meta_gradient_equals_a_naive_loop(strategy, first_order):
    model = conv4(5, hidden=8, seed=4).double()
    learner = maml(model, inner_lr=0.3, steps=2, first_order=first_order, strategy=strategy, zero_head=True)
    batch = omniglot_like_batch(tasks=3, shots=2, queries=2)
    diff = meta_gradient_gap(learner, batch, naive_zero_head_gradient(model, batch, 2, 0.3, first_order))
    assert diff < 1e-10, f"{strategy}: max |core - naive| = {diff:.3e}"
    grads, _ = learner.meta_gradient(batch)
    assert grads["head.weight"].abs().max() == 0 and grads["head.bias"].abs().max() == 0  # the head is only a shape
    assert flat(list(grads.values())).abs().max() > 0


@pytest.mark.parametrize("strategy", ["batched", "loop"])
def test_zero_head_anil_equals_a_naive_loop(strategy):
    model = conv4(5, hidden=8, seed=5).double()
    learner = anil(model, inner_lr=0.3, steps=2, strategy=strategy, zero_head=True)
    batch = omniglot_like_batch(tasks=2, shots=1, queries=3)
    diff = meta_gradient_gap(learner, batch, naive_zero_head_gradient(model, batch, 2, 0.3, head_only=True))
    assert diff < 1e-10, f"{strategy}: max |core - naive| = {diff:.3e}"


def test_zero_head_meta_gradient_matches_finite_differences():
    model = conv4(5, hidden=4, seed=6).double()
    learner = maml(model, inner_lr=0.3, steps=2, strategy="batched", zero_head=True)
    batch = omniglot_like_batch(tasks=2, shots=1, queries=2)
    grads, _ = learner.meta_gradient(batch)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    direction = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    eps = 1e-6

    def loss_at(t):
        with torch.no_grad():
            moved = {k: v + t * direction[k] for k, v in params.items()}
        return naive_zero_head_loss(model, moved, batch, 2, 0.3).item()
    fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = sum((grads[k] * direction[k]).sum() for k in params).item()
    assert abs(fd - analytic) < 1e-6 * max(1.0, abs(fd)), (fd, analytic)


def test_zero_head_starts_every_class_equal_and_ignores_the_learned_head():
    model = conv4(5, hidden=8, seed=7).double()
    learner = fomaml(model, strategy="loop", zero_head=True)
    batch = omniglot_like_batch(tasks=2, shots=2, queries=2)
    params = learner.adapted_params(batch, steps=0)
    assert params["head.weight"].abs().max() == 0 and params["head.bias"].abs().max() == 0
    before = learner.evaluate_batch(batch, steps=1)
    with torch.no_grad():
        model.head.weight.add_(torch.randn_like(model.head.weight))  # the meta-learned head plays no part
    torch.testing.assert_close(learner.evaluate_batch(batch, steps=1), before)


def test_zero_head_needs_a_linear_head_and_is_off_by_default():
    assert maml(conv4(5, hidden=4)).inner.head_init is None
    assert metasgd(conv4(5, hidden=4), zero_head=True).inner.head_init == "zeros"
    with pytest.raises(ArgumentError, match="zero_head needs a model with a linear head"):
        maml(conv4(0, hidden=4), zero_head=True)  # an embedding: no head


def test_train_cli_and_recipes_carry_zero_head():
    from metalib.algorithms.gradient import MAMLSettings
    from metalib.recipes import Recipe
    from metalib.train_cli import parse_args
    from metalib.training_run import learner_from_options, run_settings
    _, a = parse_args(["--algorithm", "fomaml", "--zero-head"])
    assert learner_from_options(a, torch.device("cpu")).inner.head_init == "zeros"
    assert run_settings(a)["zero_head"] is True and run_settings(parse_args([])[1])["zero_head"] is False
    for bad in (["--algorithm", "reptile", "--zero-head"], ["--algorithm", "protonet", "--zero-head"],
                ["--dataset", "sinusoid", "--zero-head"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    r = Recipe("x", "fomaml", ways=5, shots=1, queries=1, steps=10, meta_batch=2, outer_lr=1e-3,
               learner=MAMLSettings(zero_head=True))
    assert r.options()["zero_head"] is True and Recipe("y", "maml", 5, 1, 1, 10, 2, 1e-3).options()["zero_head"] is False

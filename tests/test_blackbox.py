"""Black-box learners: the CNP and the attention learner are invariant to the order of the support set (as they
claim), have the right shapes, learn small problems; the Gaussian problem; the CLI builds them."""
from __future__ import annotations

import math

import pytest
import torch

from metalib.algorithms import attention_learner, cnp
from metalib.errors import ArgumentError
from metalib.evaluate import evaluate
from metalib.models import conv4
from metalib.problems import GAUSSIAN
from metalib.tasks import EpisodeSampler, SinusoidTasks, TaskBatch
from metalib.train import meta_train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _permuted_support(batch: TaskBatch, seed: int = 0) -> TaskBatch:
    perm = torch.randperm(batch.support_x.shape[1], generator=torch.Generator().manual_seed(seed))
    return TaskBatch(batch.support_x[:, perm], batch.support_y[:, perm], batch.query_x, batch.query_y)


def test_gaussian_problem_is_the_normal_nll_and_scores_the_mean():
    out, y = torch.tensor([[0.5, 0.0]]), torch.tensor([[1.0]])
    sigma = 0.1 + 0.9 * math.log(2.0)  # softplus(0) = log 2
    nll = 0.5 * math.log(2 * math.pi * sigma ** 2) + 0.25 / (2 * sigma ** 2)
    assert GAUSSIAN.loss(out, y).item() == pytest.approx(nll, rel=1e-6)
    assert GAUSSIAN.score(out, y).item() == pytest.approx(0.25)


def _lines(B: int, seed: int) -> TaskBatch:
    """Tasks y = a x + b (a, b uniform in [-1, 1]), 5 support and 10 query points in [-2, 2]."""
    g = torch.Generator().manual_seed(seed)
    ab = torch.rand(B, 1, 2, generator=g) * 2 - 1
    sx, qx = (torch.rand(B, n, 1, generator=g) * 4 - 2 for n in (5, 10))
    return TaskBatch(sx, sx * ab[..., :1] + ab[..., 1:], qx, qx * ab[..., :1] + ab[..., 1:])


def test_cnp_is_invariant_to_the_support_order_and_fits_a_family_of_lines():
    learner = cnp(seed=0, hidden=32)
    batch = SinusoidTasks(10, 10, seed=0).sample(0, 4)
    out = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    assert out.shape == (4, 10, 2)
    shuffled = _permuted_support(batch)
    torch.testing.assert_close(learner.predict(shuffled.support_x, shuffled.support_y, shuffled.query_x), out)
    test = _lines(100, seed=999)
    before = learner.evaluate_batch(test).mean().item()
    opt = torch.optim.Adam(learner.parameters(), lr=3e-3)
    for step in range(400):
        grads, _ = learner.meta_gradient(_lines(16, seed=step))
        for k, p in learner.meta_parameters().items():
            p.grad = grads[k]
        opt.step()
    after = learner.evaluate_batch(test).mean().item()  # the mean's squared error on new lines
    assert after < 0.1 * before and after < 0.1
    with pytest.raises(ArgumentError, match="model=None"):
        cnp(conv4(5))


def test_attention_learner_is_invariant_to_the_support_order_equivariant_in_queries_and_learns(pattern_images):
    images = pattern_images()
    learner = attention_learner(conv4(0, hidden=16, seed=0), ways=5, width=64, heads=4, blocks=1, seed=0)
    batch = EpisodeSampler(images, ways=5, shots=2, queries=3, seed=0).sample(0, 2)
    learner.eval()
    logits = learner.logits(batch)
    assert logits.shape == (2, 15, 5)
    torch.testing.assert_close(learner.logits(_permuted_support(batch)), logits, rtol=1e-4, atol=1e-5)
    perm = torch.randperm(15, generator=torch.Generator().manual_seed(1))
    swapped = TaskBatch(batch.support_x, batch.support_y, batch.query_x[:, perm], batch.query_y[:, perm])
    torch.testing.assert_close(learner.logits(swapped), logits[:, perm], rtol=1e-4, atol=1e-5)
    learner.train()
    # black-box learners sit on a plateau at chance before they learn to read labels (~150 steps here)
    meta_train(learner, EpisodeSampler(images, ways=5, shots=1, queries=5, seed=1), steps=200, meta_batch=4,
               optimizer=torch.optim.Adam(learner.parameters(), lr=3e-3), progress=False)
    assert evaluate(learner, EpisodeSampler(images, ways=5, shots=1, queries=5, seed=2), n_tasks=40).mean > 0.8
    with pytest.raises(ArgumentError, match="at most 5 ways"):
        learner.logits(EpisodeSampler(images, ways=6, shots=1, queries=1, seed=0).sample(0, 1))


def test_train_cli_builds_the_black_box_learners():
    from metalib.train_cli import parse_args
    from metalib.training_run import learner_from_options

    _, a = parse_args(["--algorithm", "cnp", "--dataset", "sinusoid", "--shots", "10"])
    assert learner_from_options(a, torch.device("cpu")).name == "cnp"
    _, a = parse_args(["--algorithm", "attention", "--ways", "5", "--eval-ways", "20"])
    learner = learner_from_options(a, torch.device("cpu"))
    assert learner.name == "attention" and learner.ways == 20
    for bad in (["--algorithm", "cnp"], ["--algorithm", "attention", "--dataset", "sinusoid"]):
        with pytest.raises(SystemExit):
            parse_args(bad)

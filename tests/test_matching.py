"""Matching Networks: the attention's class probabilities against a hand computation and a naive per-query loop, the
full context embeddings' LSTMs against torch's own, the meta-gradient against finite differences in float64, and
learning a task family."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metalib.algorithms import matching
from metalib.algorithms.matching import matching_log_probs
from metalib.errors import ArgumentError
from metalib.models import conv4
from metalib.tasks import EpisodeSampler
from reference import accuracy_after_training, episode_gradient_check

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_attention_probabilities_of_a_hand_computed_case():
    # two classes, one support each at right angles; the query at 60 degrees from class 0 and 30 from class 1
    zs = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    zq = torch.tensor([[[math.cos(math.pi / 3), math.sin(math.pi / 3)]]], dtype=torch.float64) * 5
    ys = torch.tensor([[0, 1]])
    p = matching_log_probs(zs, ys, zq, 2, scale=2.0).exp()[0, 0]
    e0, e1 = math.exp(2 * 0.5), math.exp(2 * math.sqrt(3) / 2)
    assert p.tolist() == pytest.approx([e0 / (e0 + e1), e1 / (e0 + e1)], rel=1e-12)


def test_attention_probabilities_equal_a_naive_loop_with_several_shots():
    g = torch.Generator().manual_seed(0)
    zs, zq = torch.randn(2, 9, 4, generator=g, dtype=torch.float64), torch.randn(2, 5, 4, generator=g, dtype=torch.float64)
    ys = torch.tensor([0, 1, 2] * 3).expand(2, 9)
    logp = matching_log_probs(zs, ys, zq, 3, scale=3.0)
    for b in range(2):
        for q in range(5):
            cos = np.array([float(zq[b, q] @ zs[b, i] / (zq[b, q].norm() * zs[b, i].norm())) for i in range(9)])
            a = np.exp(3.0 * cos) / np.exp(3.0 * cos).sum()
            naive = [a[ys[b].numpy() == c].sum() for c in range(3)]
            np.testing.assert_allclose(logp[b, q].exp().numpy(), naive, rtol=1e-12)


def test_full_context_embeddings_run_torchs_own_lstms():
    learner = matching(conv4(0, hidden=6, seed=0), full_context=True, context_steps=3).double()
    params = dict(learner.named_parameters())
    g = torch.Generator().manual_seed(1)
    zs, zq = torch.randn(2, 7, 6, generator=g, dtype=torch.float64), torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out, _ = learner.support_lstm(zs)
        gs = learner._context_support(params, zs)
        torch.testing.assert_close(gs, zs + out[..., :6] + out[..., 6:], rtol=0, atol=1e-14)
        # the query LSTM by torch's LSTMCell, one query at a time
        fq = learner._context_queries(params, zq, gs)
        for b in range(2):
            for q in range(4):
                h = c = r = torch.zeros(1, 6, dtype=torch.float64)
                x = zq[b, q:q + 1]
                for _ in range(3):
                    h, c = learner.query_lstm(x, (h + r, c))
                    h = h + x
                    r = torch.softmax(h @ gs[b].T, dim=-1) @ gs[b]
                torch.testing.assert_close(fq[b, q:q + 1], h, rtol=0, atol=1e-13)


@pytest.mark.parametrize("full_context", [False, True])
def test_meta_gradient_equals_finite_differences(full_context, pattern_images):
    learner = matching(conv4(0, hidden=6, seed=0), scale=4.0, full_context=full_context, context_steps=2).double()
    batch = EpisodeSampler(pattern_images(12), ways=4, shots=2, queries=2, seed=0).sample(0, 2).to(dtype=torch.float64)
    grads, metrics = learner.meta_gradient(batch)
    assert set(grads) == set(learner.meta_parameters()) and np.isfinite(metrics["loss"])
    names = ["log_scale", "model.features.4.weight"] + (["support_lstm.weight_hh_l0_reverse", "query_lstm.weight_ih"]
                                                        if full_context else [])
    analytic, numeric = episode_gradient_check(learner, batch, names)
    assert abs(analytic) > 1e-6 and analytic == pytest.approx(numeric, rel=1e-6)


def test_matching_learns_a_synthetic_task_family_and_rejects_bad_settings(pattern_images):
    images = pattern_images(30)
    learner = matching(conv4(0, hidden=16, seed=0))
    assert accuracy_after_training(learner, images, 20) > 0.9
    with pytest.raises(ArgumentError, match="scale must be > 0"):
        matching(conv4(0, hidden=8), scale=0.0)

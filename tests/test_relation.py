"""Relation Networks: the batched pair scores against a naive loop over (query, class) pairs through the modules'
own forward passes, the squared-error meta-gradient against finite differences in float64, the feature-map
embedding, and learning a task family."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metalib.algorithms import build_model, make_learner, relation
from metalib.errors import ArgumentError
from metalib.models import backbone, conv4
from metalib.tasks import EpisodeSampler
from reference import accuracy_after_training, episode_gradient_check

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_feature_map_embedding_keeps_7x7_maps_and_conv4_is_unchanged():
    maps = conv4(0, pooled_blocks=2, seed=0)
    assert maps.feature_shape == (64, 7, 7) and maps(torch.rand(3, 1, 28, 28)).shape == (3, 64 * 49)
    assert conv4(0).feature_shape == (64, 1, 1)
    assert [k for k, _ in conv4(5).named_parameters()] == [  # the zoo's keys: the default conv4 did not move
        f"features.{i}.{w}" for i in (0, 1, 4, 5, 8, 9, 12, 13) for w in ("weight", "bias")] + ["head.weight", "head.bias"]
    assert build_model("relation", "classification", ways=5).feature_shape == (64, 7, 7)
    with pytest.raises(ArgumentError, match="conv4 only"):
        backbone("resnet12", 0, in_channels=3, image_size=84, feature_maps=True)
    with pytest.raises(ArgumentError, match="pooled_blocks=2"):
        relation(conv4(0, hidden=4))
    with pytest.raises(ArgumentError, match="needs a model"):
        make_learner("relation", None)


def test_pair_scores_equal_a_naive_loop_over_pairs(pattern_images):
    learner = relation(conv4(0, hidden=6, pooled_blocks=2, seed=0)).double()
    batch = EpisodeSampler(pattern_images(12), ways=3, shots=2, queries=2, seed=0).sample(0, 2).to(dtype=torch.float64)
    logits = learner.logits(batch)
    assert logits.shape == (2, 6, 3)
    rel = learner.relation
    with torch.no_grad():
        for b in range(2):  # the modules' own forward passes (BatchNorm over the task's batch), one pair at a time
            z = learner.model(torch.cat([batch.support_x[b], batch.query_x[b]])).view(-1, 6, 7, 7)
            zs, zq = z[:6], z[6:]
            classes = [zs[batch.support_y[b] == c].sum(0) for c in range(3)]
            pairs = torch.stack([torch.cat([classes[c], zq[q]]) for q in range(6) for c in range(3)])
            naive = rel.fc2(F.relu(rel.fc1(rel.features(pairs)))).view(6, 3)
            np.testing.assert_allclose(logits[b].numpy(), naive.numpy(), rtol=1e-6, atol=1e-8)
    # the training loss is the squared error of the sigmoid scores against the one-hot labels
    loss = learner.episode_loss(logits, batch.query_y)
    target = F.one_hot(batch.query_y, 3).double()
    torch.testing.assert_close(loss, ((torch.sigmoid(logits) - target) ** 2).mean((1, 2)))


def test_meta_gradient_equals_finite_differences(pattern_images):
    learner = relation(conv4(0, hidden=6, pooled_blocks=2, seed=0)).double()
    batch = EpisodeSampler(pattern_images(12), ways=3, shots=2, queries=2, seed=0).sample(0, 2).to(dtype=torch.float64)
    grads, metrics = learner.meta_gradient(batch)
    assert set(grads) == set(learner.meta_parameters()) and np.isfinite(metrics["loss"])
    names = ["relation.fc1.weight", "relation.fc2.bias", "relation.features.4.weight", "model.features.8.weight"]
    analytic, numeric = episode_gradient_check(learner, batch, names)
    assert abs(analytic) > 1e-6 and analytic == pytest.approx(numeric, rel=1e-6)


def test_relation_learns_a_synthetic_task_family(pattern_images):
    images = pattern_images(30)
    learner = relation(conv4(0, hidden=16, pooled_blocks=2, seed=0), seed=0)
    assert accuracy_after_training(learner, images, 30) > 0.9

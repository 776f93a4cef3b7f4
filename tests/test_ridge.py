"""R2D2 / MetaOptNet-ridge: the Woodbury head against the closed-form ridge solution in float64, its
meta-gradient against finite differences, and learning a task family; the CLI builds it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metalib.algorithms import r2d2
from metalib.algorithms.ridge import ridge_head
from metalib.errors import ArgumentError
from metalib.models import conv4
from metalib.tasks import EpisodeSampler

from reference import accuracy_after_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("n, d", [(5, 64), (25, 16)])  # fewer and more support points than features
def test_woodbury_head_equals_the_closed_form_ridge_solution(n, d):
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(3, n, d, generator=g, dtype=torch.float64)
    ys = torch.arange(n).remainder(5).expand(3, n)
    lam = 0.7
    w = ridge_head(zs, ys, 5, lam)
    for b in range(3):
        z, y = zs[b].numpy(), np.eye(5)[ys[b].numpy()]
        primal = np.linalg.solve(z.T @ z + lam * np.eye(d), z.T @ y)  # (Z^T Z + lam I_d)^-1 Z^T Y
        np.testing.assert_allclose(w[b].numpy(), primal, rtol=1e-10, atol=1e-12)


def test_r2d2_logits_and_meta_gradient_are_exact(pattern_images):
    learner = r2d2(conv4(0, hidden=8, seed=0), lam=0.5, scale=2.0).double()
    with torch.no_grad():
        learner.bias.fill_(0.3)
    batch = EpisodeSampler(pattern_images(12), ways=4, shots=2, queries=3, seed=0).sample(0, 2).to(dtype=torch.float64)
    logits = learner.logits(batch)
    assert logits.shape == (2, 12, 4)
    with torch.no_grad():  # the ridge head written out from the embeddings, per task (the batched BatchNorm
        # of forward_adapted and the module's own agree to ~1e-9 in float64, hence the tolerance)
        for b in range(2):
            z = learner.model(torch.cat([batch.support_x[b], batch.query_x[b]])).numpy()
            zs, zq, y = z[:8], z[8:], np.eye(4)[batch.support_y[b].numpy()]
            w = np.linalg.solve(zs.T @ zs + 0.5 * np.eye(zs.shape[1]), zs.T @ y)
            np.testing.assert_allclose(logits[b].numpy(), 2.0 * zq @ w + 0.3, rtol=1e-6, atol=1e-8)
    grads, metrics = learner.meta_gradient(batch)
    assert set(grads) == set(learner.meta_parameters()) and np.isfinite(metrics["loss"])

    def loss_at(log_lam):
        with torch.no_grad():
            learner.log_lam.fill_(log_lam)
            return learner.problem.task_loss(learner.logits(batch), batch.query_y).mean().item()
    base, h = learner.log_lam.item(), 1e-6
    fd = (loss_at(base + h) - loss_at(base - h)) / (2 * h)
    loss_at(base)
    assert abs(fd) > 1e-6 and grads["log_lam"].item() == pytest.approx(fd, rel=1e-6)
    # and along a random direction in the second conv's kernels (the first conv's sit near a ReLU / max-pool kink of
    # this tiny net at h = 1e-6: the difference quotient then straddles it; it agrees at h = 1e-8)
    weight = dict(learner.named_parameters())["model.features.4.weight"]
    w0 = weight.detach().clone()
    d = torch.randn(w0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    values = []
    with torch.no_grad():
        for s in (h, -h):
            weight.copy_(w0 + s * d)
            values.append(learner.problem.task_loss(learner.logits(batch), batch.query_y).mean().item())
        weight.copy_(w0)
    assert (grads["model.features.4.weight"] * d).sum().item() == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-6)


def test_r2d2_learns_a_synthetic_task_family_and_rejects_bad_settings(pattern_images):
    images = pattern_images(30)
    learner = r2d2(conv4(0, hidden=16, seed=0))
    assert accuracy_after_training(learner, images, 20) > 0.9
    with pytest.raises(ArgumentError, match="lam and scale"):
        r2d2(conv4(0, hidden=8), lam=0.0)


def test_train_cli_builds_r2d2_on_an_embedding():
    from metalib.train_cli import parse_args
    from metalib.training_run import learner_from_options

    _, a = parse_args(["--algorithm", "r2d2", "--ways", "5"])
    learner = learner_from_options(a, torch.device("cpu"))
    assert learner.name == "r2d2" and not any(k.startswith("model.head") for k in learner.state_dict())
    with pytest.raises(SystemExit):
        parse_args(["--algorithm", "r2d2", "--inner-lr", "0.1"])

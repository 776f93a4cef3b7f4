"""The transfer baselines: pre-training minibatches (every image once per epoch, a pure function of the seed and the
index), the pre-training loss against a hand computation, each test-time method against a naive reference (the
head's optimality conditions, a per-task loop, SimpleShot's formula), and the command line."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metalib.algorithms import make_learner
from metalib.algorithms.transfer import class_means, fit_head, logistic_regression
from metalib.data.base import ClassSplit
from metalib.errors import ArgumentError
from metalib.evaluate import evaluate
from metalib.models import conv4
from metalib.tasks import ClassBatches, EpisodeSampler
from metalib.train import meta_train
from metalib.train_cli import parse_args

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(classes=6, drawings=5, side=16, seed=0):
    return (torch.rand(classes, drawings, side, side, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)


def test_minibatches_cover_every_image_once_per_epoch_and_depend_only_on_seed_and_index():
    images = _images()  # 30 images; batches of 7 straddle epochs
    batches = ClassBatches(images, batch_size=7, seed=3)
    seen = torch.cat([batches.image_ids(i) for i in range(30)])  # 210 positions = 7 epochs
    for epoch in range(7):
        assert sorted(seen[epoch * 30:(epoch + 1) * 30].tolist()) == list(range(30))
    assert not torch.equal(seen[:30], seen[30:60])  # each epoch its own order
    again = ClassBatches(images, batch_size=7, seed=3)
    assert torch.equal(again.batch([12, 4]).query_x, batches.batch([12, 4]).query_x)  # any order, any time
    assert not torch.equal(ClassBatches(images, batch_size=7, seed=4).task(0).query_x, batches.task(0).query_x)
    task = batches.task(5)
    ids = batches.image_ids(5)
    assert task.support_x.shape == (1, 0, 1, 16, 16) and task.query_x.shape == (1, 7, 1, 16, 16)
    assert torch.equal(task.query_y[0], ids // 5)  # each image's class (dense: 5 drawings per class)
    assert torch.equal(task.query_x[0, :, 0], images.flatten(0, 1)[ids].float() / 255)
    assert torch.equal(task.info["class_ids"].gather(1, task.query_y), task.query_y)
    every = torch.cat([x for x in batches.epoch_batches()], dim=1)
    assert every.shape[1] == 30
    torch.testing.assert_close(every[0, :, 0].sum(0), images.float().sum((0, 1)) / 255)


def test_minibatches_of_a_ragged_split_use_every_image_of_every_class():
    counts = torch.tensor([1, 4, 2])
    images = (torch.arange(7).view(7, 1, 1, 1).expand(7, 1, 4, 4)).to(torch.uint8)  # pixel value = image index
    split = ClassSplit("toy", images, ["a", "b", "c"], counts=counts)
    batches = ClassBatches(split, batch_size=7, seed=0)
    task = batches.task(0)
    values = (task.query_x[0, :, 0, 0, 0] * 255).round().long()
    assert sorted(values.tolist()) == list(range(7))
    assert torch.equal(task.query_y[0], torch.tensor([0, 1, 1, 1, 1, 2, 2])[values])


def test_pretraining_loss_is_the_cross_entropy_over_global_classes():
    learner = make_learner("baseline", conv4(0, hidden=4, image_size=16, seed=0), ways=6, seed=0).double()
    batch = ClassBatches(_images(), batch_size=10, seed=0).task(0).to(dtype=torch.float64)
    grads, metrics = learner.meta_gradient(batch)
    with torch.no_grad():
        z = learner.model(batch.query_x[0])  # the module's own pass: BatchNorm over the minibatch
        expected = F.cross_entropy(learner.classifier(z), batch.query_y[0])
    assert metrics["loss"] == pytest.approx(expected.item(), rel=1e-9)
    assert grads["classifier.weight"].abs().sum() > 0
    # episodes work too: their labels are mapped to the split's classes
    episode = EpisodeSampler(_images(), 3, 1, 2, seed=0).task(0).to(dtype=torch.float64)
    _, m = learner.meta_gradient(episode)
    with torch.no_grad():
        x = torch.cat([episode.support_x[0], episode.query_x[0]])
        y = episode.info["class_ids"][0][torch.cat([episode.support_y[0], episode.query_y[0]])]
        assert m["loss"] == pytest.approx(F.cross_entropy(learner.classifier(learner.model(x)), y).item(), rel=1e-9)
    with pytest.raises(ArgumentError, match="ways = the training split's classes"):
        make_learner("baseline", conv4(0, hidden=4, image_size=16), ways=3).meta_gradient(batch.to(dtype=torch.float32))


def _features(tasks=3, n=10, ways=5, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tasks, n, dim, generator=g, dtype=torch.float64), torch.arange(n).remainder(ways).expand(tasks, n)


def test_logistic_regression_meets_its_optimality_conditions_per_task():
    zs, ys = _features()
    w, b = logistic_regression(zs, ys, 5, l2=0.5, max_iter=200)
    for t in range(3):  # each task's own objective: sum of cross-entropies + l2/2 |W|^2, gradient zero at the optimum
        wt, bt = w[t].clone().requires_grad_(), b[t].clone().requires_grad_()
        loss = F.cross_entropy(zs[t] @ wt.T + bt, ys[t], reduction="sum") + 0.25 * wt.pow(2).sum()
        gw, gb = torch.autograd.grad(loss, [wt, bt])
        assert gw.abs().max() < 1e-6 and gb.abs().max() < 1e-6
    assert w.abs().max() > 0.1


def test_a_new_head_per_task_equals_one_trained_on_that_task_alone():
    zs, ys = _features()
    for scale in (None, 4.0):
        w, b = fit_head(zs, ys, 5, steps=20, lr=0.05, scale=scale)
        for t in range(3):
            wt, bt = fit_head(zs[t:t + 1], ys[t:t + 1], 5, steps=20, lr=0.05, scale=scale)
            torch.testing.assert_close(w[t:t + 1], wt, rtol=1e-10, atol=1e-12)
            if scale is None:
                torch.testing.assert_close(b[t:t + 1], bt, rtol=1e-10, atol=1e-12)
        assert (b is None) == (scale is not None)
    # the cosine head starts at the class means, and training moves it towards fitting the support set
    w0, _ = fit_head(zs, ys, 5, steps=0, lr=0.05, scale=4.0)
    torch.testing.assert_close(w0, class_means(zs, ys, 5))


def test_simpleshot_is_nearest_centroid_on_centred_normalised_features(pattern_images):
    learner = make_learner("simpleshot", conv4(0, hidden=8, seed=0), ways=30, seed=0).double()
    with torch.no_grad():
        learner.feature_mean.copy_(torch.linspace(0, 1, 8))
    batch = EpisodeSampler(pattern_images(12), ways=4, shots=2, queries=3, seed=0).task(0).to(dtype=torch.float64)
    logits = learner.query_outputs(batch)
    with torch.no_grad():
        z = learner.model(torch.cat([batch.support_x[0], batch.query_x[0]])).numpy()
    z = z - np.linspace(0, 1, 8)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    zs, zq, ys = z[:8], z[8:], batch.support_y[0].numpy()
    centroids = np.stack([zs[ys == c].mean(0) for c in range(4)])
    naive = -((zq[:, None] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_allclose(logits[0].numpy(), naive, rtol=1e-6, atol=1e-9)  # batched vs module BatchNorm: ~1e-9


def test_the_feature_mean_is_the_mean_over_the_training_images_when_training_ends(pattern_images):
    images = pattern_images(10)
    learner = make_learner("simpleshot", conv4(0, hidden=8, seed=0), ways=10, seed=0)
    batches = ClassBatches(images, batch_size=50, seed=0)
    meta_train(learner, batches, steps=2, meta_batch=1, progress=False)
    with torch.no_grad():
        expected = torch.cat([learner.model(x[0]) for x in batches.epoch_batches()]).mean(0)
    torch.testing.assert_close(learner.feature_mean, expected, rtol=1e-5, atol=1e-6)


def test_finetuning_equals_a_naive_per_task_loop(pattern_images):
    model = conv4(0, hidden=6, seed=0).double()
    learner = make_learner("finetune", model, ways=30, seed=0, head_steps=3, head_lr=0.05, cosine_scale=5.0).double()
    batch = EpisodeSampler(pattern_images(12), ways=3, shots=2, queries=2, seed=0).sample(0, 2).to(dtype=torch.float64)
    logits = learner.query_outputs(batch)
    for t in range(2):  # the modules' own forward passes and plain autograd, one task at a time
        from torch.func import functional_call
        params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
        sx, sy = batch.support_x[t], batch.support_y[t]
        with torch.no_grad():
            w = F.normalize(class_means(F.normalize(model(sx), dim=-1)[None], sy[None], 3)[0], dim=-1)
        w.requires_grad_()
        for _ in range(3):
            out = 5.0 * F.normalize(functional_call(model, params, (sx,)), dim=-1) @ F.normalize(w, dim=-1).T
            grads = torch.autograd.grad(F.cross_entropy(out, sy), [*params.values(), w])
            params = {k: (v - 0.05 * g).detach().requires_grad_() for (k, v), g in zip(params.items(), grads)}
            w = (w - 0.05 * grads[-1]).detach().requires_grad_()
        with torch.no_grad():
            naive = 5.0 * F.normalize(functional_call(model, params, (batch.query_x[t],)), dim=-1) @ F.normalize(w, dim=-1).T
        np.testing.assert_allclose(logits[t].numpy(), naive.numpy(), rtol=1e-7, atol=1e-9)
    inductive = learner.query_outputs(batch, batchnorm="inductive")
    assert inductive.shape == logits.shape and not torch.allclose(inductive, logits)


@pytest.mark.parametrize("name", ["baseline", "baseline_pp", "simpleshot", "linear_probe", "finetune"])
def test_pretraining_then_each_method_solves_a_task_family(name, pattern_images):
    images = pattern_images(30)
    learner = make_learner(name, conv4(0, hidden=16, seed=0), ways=20, seed=0)
    meta_train(learner, ClassBatches(images[:20], batch_size=40, seed=1), steps=30, meta_batch=1, progress=False)
    # new classes: the embedding transfers
    result = evaluate(learner, EpisodeSampler(images[20:], ways=5, shots=1, queries=5, seed=2), n_tasks=20)
    assert result.mean > 0.9, result


def test_the_command_line_sizes_the_head_from_the_data_and_refuses_misplaced_options():
    _, a = parse_args(["--algorithm", "simpleshot", "--batch-size", "32"])
    assert a.ways is None and a.batch_size == 32 and a.eval_ways == 5
    _, a = parse_args(["--recipe", "baseline-omniglot"])
    assert (a.ways, a.batch_size, a.head_steps) == (4800, 64, 100)
    with pytest.raises(SystemExit):
        parse_args(["--algorithm", "protonet", "--batch-size", "32"])
    with pytest.raises(SystemExit):
        parse_args(["--algorithm", "simpleshot", "--dataset", "sinusoid"])


def test_a_subset_of_classes_keeps_the_rotations_of_a_character_together():
    names = [f"Alpha/character{c:02d}/rot{r:03d}" for c in range(10) for r in (0, 90, 180, 270)]
    split = ClassSplit("train", _images(classes=40), names)
    part = split.subset(0.3, seed=1)
    characters = {n.rsplit("/rot", 1)[0] for n in part.class_names}
    assert len(characters) == 3 and part.num_classes == 12
    assert all(f"{c}/rot{r:03d}" in part.class_names for c in characters for r in (0, 90, 180, 270))
    kept = [names.index(n) for n in part.class_names]
    assert kept == sorted(kept) and torch.equal(part.images, split.images[kept])
    assert part.class_names != split.subset(0.3, seed=2).class_names
    with pytest.raises(ValueError, match="fraction"):
        split.subset(0.0)


def test_paired_difference_is_the_interval_of_the_per_task_differences():
    from metalib.evaluate import EvalResult, paired_difference
    a = EvalResult("accuracy", 0.0, 0.0, 4, None, scores=torch.tensor([1.0, 0.8, 0.6, 0.9]))
    b = EvalResult("accuracy", 0.0, 0.0, 4, None, scores=torch.tensor([0.9, 0.8, 0.4, 0.7]))
    mean, half = paired_difference(a, b)
    d = np.array([0.1, 0.0, 0.2, 0.2])
    assert mean == pytest.approx(d.mean()) and half == pytest.approx(1.96 * d.std(ddof=1) / 2)
    with pytest.raises(ValueError, match="same tasks"):
        paired_difference(a, EvalResult("accuracy", 0.0, 0.0, 3, None, scores=torch.ones(3)))


def test_the_command_line_pretrains_on_minibatches_and_sizes_the_head_by_the_training_classes(
        omniglot_data_dir, tmp_path, capsys, monkeypatch):
    from metalib.train_cli import run

    # SimpleShot's feature mean over two minibatches instead of all 82 240 training images (half a minute)
    monkeypatch.setattr(ClassBatches, "epoch_batches", lambda self, epoch=0: (self.task(i).query_x for i in range(2)))

    argv = ["--algorithm", "simpleshot", "--data-dir", str(omniglot_data_dir), "--steps", "2", "--batch-size", "8",
            "--val-tasks", "2", "--val-every", "1", "--eval-tasks", "2", "--no-progress"]
    assert run([*argv, "--checkpoint", str(tmp_path / "run.pt")]) == 0
    out = capsys.readouterr().out
    assert "classes=4112" in out and "val_accuracy" in out and "test accuracy" in out
    assert run([*argv, "--ways", "5"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: simpleshot pre-trains a head over all 4112 training classes: --ways must be 4112 "
                           "(or left out), got 5")

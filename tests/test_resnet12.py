"""ResNet-12 as every learner runs it, checked in float64 as conv4 is (tests/test_inner.py): its task-batched forward
against the module's, the MAML-family meta-gradients against the naive per-task loop and finite differences under
every engine, and the shape of the real network at 84x84."""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from metalib.algorithms import anil, fomaml, maml, mamlpp, protonet
from metalib.models import ResNet12, conv4, resnet12
from metalib.models.resnet12 import drop_block
from metalib.tasks import TaskBatch
from reference import directional_derivatives, flat, naive_meta_gradient

pytestmark = pytest.mark.usefixtures("float64_default")
STRATEGIES = ["batched", "vmap", "loop", "threads"]
TINY = (4, 6, 8, 10)  # the real widths are 64-160-320-640: the same code at a size float64 checks quickly


def rgb_batch(tasks=3, ways=3, shots=1, queries=2, side=16, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, ways * shots, 3, side, side, generator=g, dtype=torch.float64)
    qx = torch.rand(tasks, ways * queries, 3, side, side, generator=g, dtype=torch.float64)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).clone()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).clone()
    return TaskBatch(sx, sy, qx, qy)


def tiny(n_classes=3, seed=0) -> ResNet12:
    return resnet12(n_classes, widths=TINY, seed=seed).double()


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("tasks", [1, 3])
def test_task_batched_forward_equals_the_module_per_task(tasks, channels_last):
    model = tiny()
    x = torch.rand(tasks, 5, 3, 16, 16, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    per_task = {k: v + 0.05 * torch.randn(tasks, *v.shape, generator=g, dtype=v.dtype)
                for k, v in model.named_parameters()}
    expected = torch.stack([functional_call(model, {k: v[i] for k, v in per_task.items()}, (x[i],))
                            for i in range(tasks)])
    got = model.forward_tasks(per_task, x, channels_last=channels_last)
    assert (got - expected).abs().max() < 1e-12
    shared = model.forward_tasks(dict(model.named_parameters()), x, channels_last=channels_last)
    assert (shared - torch.stack([model(xi) for xi in x])).abs().max() < 1e-12


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("algo", ["maml", "fomaml", "anil"])
def test_meta_gradient_equals_the_naive_loop(algo, strategy, two_or_more_threads):
    model = tiny()
    make = {"maml": maml, "fomaml": fomaml, "anil": anil}[algo]
    learner = make(model, inner_lr=0.3, steps=2, strategy=strategy)
    batch = rgb_batch()
    grads, _ = learner.meta_gradient(batch)
    head = [k for k, _ in model.named_parameters() if k.startswith("head.")] if algo == "anil" else None
    expected = naive_meta_gradient(model, batch, steps=2, lr=0.3, first_order=algo == "fomaml", adapt=head)
    got = [grads[k] for k in learner.meta_parameters()]
    diff = (flat(got) - flat(expected)).abs().max().item()
    assert diff < 1e-10, f"{algo}/{strategy}: max |metalib - naive| = {diff:.3e}"
    assert flat(expected).abs().max() > 1e-3


@pytest.mark.parametrize("strategy", ["batched", "threads"])
def test_second_order_meta_gradient_matches_finite_differences(strategy, two_or_more_threads):
    model = tiny()
    learner = maml(model, inner_lr=0.3, steps=2, strategy=strategy)
    batch = rgb_batch(queries=3)
    grads = learner.meta_gradient(batch)[0]
    params = dict(model.named_parameters())
    numeric, analytic, direction = directional_derivatives(learner, model, batch, grads)
    assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-8)
    first_order = fomaml(model, inner_lr=0.3, steps=2, strategy=strategy).meta_gradient(batch)[0]
    assert abs(sum((first_order[k] * direction[k]).sum() for k in params).item() - analytic) > 1e-4 * abs(analytic)


def test_mamlpp_and_protonet_run_on_it():
    batch = rgb_batch()
    learner = mamlpp(tiny(), inner_lr=0.1, steps=2)
    assert any(k.startswith("step_params.features__0__bn1") for k in dict(learner.named_parameters()))
    grads, metrics = learner.meta_gradient(batch)
    assert all(torch.isfinite(g).all() for g in grads.values())
    proto = protonet(resnet12(0, widths=TINY, seed=0).double())
    scores = proto.evaluate_batch(batch)
    assert scores.shape == (3,) and proto.query_outputs(batch).shape == (3, 6, 3)


def test_the_real_network_at_84x84():
    model = resnet12(5, seed=0)
    assert [m.conv1.out_channels for m in model.features[:4]] == [64, 160, 320, 640]
    assert sum(p.numel() for p in model.parameters()) == 12_427_525  # MetaOptNet's ResNet-12 has 12.4M weights
    with torch.no_grad():
        z = model.features(torch.rand(2, 3, 84, 84))
    assert z.shape == (2, 640) and resnet12(0).embedding_dim == 640
    assert resnet12(5, seed=3).state_dict()["head.weight"].equal(resnet12(5, seed=3).state_dict()["head.weight"])
    assert conv4(5, in_channels=3, image_size=84).embedding_dim == 64 * 5 * 5  # conv4 at mini-ImageNet's size


def test_dropblock_drops_blocks_in_training_only():
    torch.manual_seed(0)
    x = torch.ones(4, 8, 10, 10, dtype=torch.float64)
    y = drop_block(x, 0.1, 5)
    dropped = (y == 0).double().mean().item()
    assert 0.02 < dropped < 0.3 and y.sum().item() == pytest.approx(x.sum().item(), rel=0.05)
    model = resnet12(3, widths=TINY, drop_rate=0.1, seed=0).double()
    xin = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    model.eval()
    assert torch.equal(model(xin), model(xin))  # no dropping at evaluation
    model.train()
    torch.manual_seed(1)
    a = model(xin)
    torch.manual_seed(1)
    assert torch.equal(a, model(xin))  # the global seed fixes the blocks dropped

"""CUDA: the same core on a GPU gives the same numbers as on the CPU. Skipped without a GPU."""
from __future__ import annotations

import pytest
import torch

from metalib import EpisodeSampler, conv4, evaluate, meta_train
from metalib.algorithms import maml, protonet
from metalib.inner import resolve_strategy

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _sampler(device, seed=0):
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(40, 20, 28, 28, generator=g) * 255).to(torch.uint8)
    return EpisodeSampler(images, ways=5, shots=1, queries=5, seed=seed, device=device)


def test_auto_strategy_is_batched_for_conv4_on_cuda():
    assert resolve_strategy("auto", torch.device("cuda"), conv4(5)) == "batched"


@pytest.mark.parametrize("strategy", ["batched", "vmap", "loop"])
def test_cuda_meta_gradient_matches_cpu_in_float64(strategy):
    batch = _sampler("cpu").batch(range(4))
    cpu = maml(conv4(5, seed=0).double(), inner_lr=0.4, steps=2, strategy="loop")
    gpu = maml(conv4(5, seed=0).double().cuda(), inner_lr=0.4, steps=2, strategy=strategy)
    batch64 = type(batch)(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y)
    g_cpu, _ = cpu.meta_gradient(batch64)
    g_gpu, _ = gpu.meta_gradient(batch64.to("cuda"))
    for k in g_cpu:
        torch.testing.assert_close(g_gpu[k].cpu(), g_cpu[k], rtol=1e-8, atol=1e-10)


def test_training_and_evaluation_run_on_cuda():
    sampler = _sampler("cuda")
    assert sampler.batch([0]).support_x.is_cuda
    for learner in (maml(conv4(5, seed=0, device="cuda"), inner_lr=0.4), protonet(conv4(0, seed=0, device="cuda"))):
        hist = meta_train(learner, sampler, steps=3, meta_batch=4, progress=False)
        assert len(hist) >= 1
        result = evaluate(learner, _sampler("cuda", seed=1), n_tasks=8)
        assert 0.0 <= result.mean <= 1.0


@pytest.mark.parametrize("name", ["imaml", "r2d2", "attention", "mamlpp", "protomaml"])
def test_new_learners_match_cpu_on_cuda_in_float64(name):
    from metalib.algorithms import attention_learner, imaml, mamlpp, protomaml, r2d2

    make = {"imaml": lambda: imaml(conv4(5, hidden=8, seed=0), steps=3),
            "mamlpp": lambda: mamlpp(conv4(5, hidden=8, seed=0), steps=2, msl_steps=10),
            "protomaml": lambda: protomaml(conv4(5, hidden=8, seed=0), steps=2),
            "r2d2": lambda: r2d2(conv4(0, hidden=8, seed=0)),
            "attention": lambda: attention_learner(conv4(0, hidden=8, seed=0), ways=5, width=16, heads=2, blocks=1)}[name]
    batch = _sampler("cpu").batch(range(3))
    batch64 = type(batch)(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y)
    g_cpu, _ = make().double().meta_gradient(batch64)
    g_gpu, _ = make().double().cuda().meta_gradient(batch64.to("cuda"))
    for k in g_cpu:
        torch.testing.assert_close(g_gpu[k].cpu(), g_cpu[k], rtol=1e-7, atol=1e-9)


def test_inductive_evaluation_matches_cpu_on_cuda():
    from metalib.algorithms import maml
    learner = maml(conv4(5, hidden=8, seed=0), steps=1)
    batch = _sampler("cpu").batch(range(3))
    cpu = learner.double().evaluate_batch(batch.to(dtype=torch.float64), batchnorm="inductive")
    gpu = learner.cuda().evaluate_batch(batch.to("cuda").to(dtype=torch.float64), batchnorm="inductive")
    torch.testing.assert_close(gpu.cpu(), cpu)

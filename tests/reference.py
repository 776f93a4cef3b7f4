"""Naive reference implementations the tests compare metalib with, and the small batches they run on.

Each reference is written out plainly, one task at a time, without metalib's inner loop (a per-task Python loop,
``torch.autograd.grad`` with ``create_graph``), so that agreement with it is evidence, not a tautology. One module
for all of them: a test file imports its references from here, never from another test file.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metalib import REGISTRY, make_learner
from metalib.algorithms import Settings
from metalib.models import conv4, mlp
from metalib.tasks import ClassBatches, EpisodeSampler, SinusoidTasks, TaskBatch


def omniglot_like_batch(tasks=3, ways=5, shots=1, queries=2, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sx = torch.rand(tasks, ways * shots, 1, 28, 28, generator=g, dtype=torch.float64)
    qx = torch.rand(tasks, ways * queries, 1, 28, 28, generator=g, dtype=torch.float64)
    sy = torch.arange(ways).repeat_interleave(shots).expand(tasks, -1).clone()
    qy = torch.arange(ways).repeat_interleave(queries).expand(tasks, -1).clone()
    return TaskBatch(support_x=sx, support_y=sy, query_x=qx, query_y=qy)


def sine_batch(tasks=4, shots=5, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(tasks, 1, 1, generator=g) * 4.9 + 0.1
    ph = torch.rand(tasks, 1, 1, generator=g) * torch.pi
    sx = torch.rand(tasks, shots, 1, generator=g) * 10 - 5
    qx = torch.rand(tasks, 10, 1, generator=g) * 10 - 5
    return TaskBatch(support_x=sx, support_y=a * torch.sin(sx - ph), query_x=qx, query_y=a * torch.sin(qx - ph))


def naive_meta_gradient(model, batch, *, steps, lr, first_order=False, adapt=None, lrs=None, loss=F.cross_entropy):
    """The textbook per-task loop with torch.autograd.grad; the reference the core must match."""
    params = dict(model.named_parameters())
    names = list(params) if adapt is None else list(adapt)
    meta_params = list(params.values()) + ([] if lrs is None else list(lrs.values()))
    total = 0.0
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        fast = dict(params)
        for _ in range(steps):
            support_loss = loss(functional_call(model, fast, (sx,)), sy)
            grads = torch.autograd.grad(support_loss, [fast[k] for k in names], create_graph=not first_order)
            for k, g in zip(names, grads):
                step_lr = lr if lrs is None else lrs[k]
                fast[k] = fast[k] - step_lr * (g.detach() if first_order else g)
        total = total + loss(functional_call(model, fast, (qx,)), qy)
    grads = torch.autograd.grad(total / len(batch.support_x), meta_params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(meta_params, grads)]


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def meta_gradient_gap(learner, batch, expected: list) -> float:
    """Max |learner.meta_gradient - expected| over every meta-parameter (``expected`` in meta_parameters() order)."""
    grads, _ = learner.meta_gradient(batch)
    return (flat([grads[k] for k in learner.meta_parameters()]) - flat(expected)).abs().max().item()


def naive_mamlpp_gradient(learner, batch, weights):
    """Per task: SGD steps with rate ``lrs[name][step]`` and BatchNorm values ``step_params[name][step]`` (``[steps,
    C]``: one set per step), the query loss after every step weighted by ``weights``; autograd through all of it."""
    model, steps = learner.model, learner.inner.steps
    lrs = learner.lrs()
    per_step = {k.replace("__", "."): v for k, v in learner.step_params.items()}
    own = {k: v for k, v in model.named_parameters() if k not in per_step}
    meta = learner.meta_parameters()
    total = 0.0
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        fast = dict(own)

        def at(i):
            return {**fast, **{k: v[i] for k, v in per_step.items()}}
        for i in range(steps):
            loss = F.cross_entropy(functional_call(model, at(i), (sx,)), sy)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {k: w - lrs[k][i] * g for (k, w), g in zip(fast.items(), grads)}
            # the query pass after step i uses step i's BatchNorm set, as the reference implementation
            # (HowToTrainYourMAMLPytorch: net_forward(..., num_step=num_step) for support and target alike)
            total = total + weights[i] * F.cross_entropy(functional_call(model, at(i), (qx,)), qy)
    grads = torch.autograd.grad(total / len(batch.support_x), list(meta.values()), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(meta.values(), grads)]


def naive_protomaml_gradient(model, batch, steps, lr, first_order=False):
    params = dict(model.named_parameters())
    body = {k: v for k, v in params.items() if not k.startswith("head.")}
    total = 0.0
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        z = functional_call(model.features, {k[len("features."):]: v for k, v in body.items()}, (sx,))
        protos = torch.stack([z[sy == c].mean(0) for c in range(5)])
        start = {**body, "head.weight": 2 * protos, "head.bias": -(protos ** 2).sum(-1)}
        fast = {k: v.view_as(v) for k, v in start.items()}  # inner gradients are partial: one variable each
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model, fast, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {k: w - lr * g for (k, w), g in zip(fast.items(), grads)}
        total = total + F.cross_entropy(functional_call(model, fast, (qx,)), qy)
    grads = torch.autograd.grad(total / len(batch.support_x), list(params.values()), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads)]


def naive_reptile_adapt(model, batch, *, steps, lr, n):
    """Per task: step i takes SGD on the examples whose rank within their class is i mod n."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    out = []
    for sx, sy in zip(batch.support_x, batch.support_y):
        rank = torch.tensor([int((sy[:j] == sy[j]).sum()) for j in range(len(sy))])
        fast = {k: v.clone().requires_grad_() for k, v in params.items()}
        for i in range(steps):
            keep = rank % n == i % n
            loss = F.cross_entropy(functional_call(model, fast, (sx[keep],)), sy[keep])
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {k: (w - lr * g).detach().requires_grad_() for (k, w), g in zip(fast.items(), grads)}
        out.append(fast)
    return {k: torch.stack([f[k].detach() for f in out]) for k in params}


def naive_zero_head_loss(model, params, batch, steps, lr, first_order=False, head_only=False):
    """Mean query loss over the tasks, each adapted from ``params`` with its head replaced by zeros."""
    total = 0.0
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        fast = {k: torch.zeros_like(v) if k.startswith("head.") else v.view_as(v) for k, v in params.items()}
        moving = [k for k in fast if k.startswith("head.") or not head_only]
        for _ in range(steps):
            fast = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in fast.items()}
            loss = F.cross_entropy(functional_call(model, fast, (sx,)), sy)
            grads = torch.autograd.grad(loss, [fast[k] for k in moving], create_graph=not first_order)
            fast = {**fast, **{k: fast[k] - lr * g for k, g in zip(moving, grads)}}
        total = total + F.cross_entropy(functional_call(model, fast, (qx,)), qy)
    return total / len(batch.support_x)


def naive_zero_head_gradient(model, batch, steps, lr, first_order=False, head_only=False):
    params = dict(model.named_parameters())
    loss = naive_zero_head_loss(model, params, batch, steps, lr, first_order, head_only)
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads)]


# small settings: every learner's cheapest meaningful configuration (the others at their defaults)
SMALL = {"inner_steps": 2, "width": 16, "layers": 2, "blocks": 1, "heads": 2, "head_steps": 3}


def small_settings(name: str, problem: str) -> Settings:
    own = REGISTRY[name].settings.options()
    return REGISTRY[name].settings.resolve({k: v for k, v in SMALL.items() if k in own}, problem)


def contract_case(name: str, seed: int = 0):
    """(learner, train sampler, test sampler): classification on tiny 16x16 images where the learner classifies,
    else the sinusoids."""
    spec = REGISTRY[name]
    problem = "classification" if "classification" in spec.problems else "regression"
    settings = small_settings(name, problem)
    if problem == "regression":
        model = None if spec.model == "none" else mlp((1, 16, 16, 1), seed=seed)
        make = lambda s: SinusoidTasks(shots=5, queries=5, seed=s)  # noqa: E731
    else:
        model = None if spec.model == "none" else conv4(0 if spec.model in ("embedding", "feature_maps") else 5, hidden=4,
                                                        pooled_blocks=2 if spec.model == "feature_maps" else 4,
                                                        image_size=16, seed=seed)
        images = (torch.rand(10, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
        make = lambda s: EpisodeSampler(images, ways=5, shots=2, queries=2, seed=s)  # noqa: E731
        if spec.training == "batches":  # supervised pre-training over the 10 classes, tested on episodes
            learner = make_learner(name, model, problem=problem, ways=10, seed=seed, settings=settings)
            return learner, ClassBatches(images, batch_size=8, seed=1), make(2)
    learner = make_learner(name, model, problem=problem, ways=5, seed=seed, settings=settings)
    return learner, make(1), make(2)


def directional_derivatives(learner, model, batch, grads: dict, eps: float = 1e-6) -> tuple[float, float, dict]:
    """``(numeric, analytic, direction)``: the query loss's derivative along a random unit direction in the model's
    parameters, by central differences of ``learner.query_losses`` (``eps`` small: ReLU, LeakyReLU and max-pool kinks
    make larger steps unreliable) and from the meta-gradient ``grads``."""
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(1)
    direction = {k: torch.randn(p.shape, generator=g) for k, p in params.items()}
    norm = torch.sqrt(sum((d ** 2).sum() for d in direction.values()))
    direction = {k: d / norm for k, d in direction.items()}  # unit step: eps means what it says
    analytic = sum((grads[k] * direction[k]).sum() for k in params).item()

    def loss_at(step: float) -> float:
        with torch.no_grad():
            for k, p in params.items():
                p.add_(step * direction[k])
        value = learner.query_losses(batch)[0].mean().item()
        with torch.no_grad():
            for k, p in params.items():
                p.sub_(step * direction[k])
        return value

    return (loss_at(eps) - loss_at(-eps)) / (2 * eps), analytic, direction


def episode_gradient_check(learner, batch, names: list[str], h: float = 1e-6) -> tuple[float, float]:
    """``(analytic, numeric)``: the derivative of an episode learner's training loss (``episode_loss`` of its logits,
    averaged over the tasks) along a random direction in the parameters ``names``, from its meta-gradient and by
    central differences in float64."""
    grads, _ = learner.meta_gradient(batch)
    params = dict(learner.named_parameters())
    gen = torch.Generator().manual_seed(2)
    direction = {k: torch.randn(params[k].shape, generator=gen, dtype=params[k].dtype) for k in names}
    values = []
    with torch.no_grad():
        for s in (h, -h):
            for k in names:
                params[k].add_(s * direction[k])
            values.append(learner.episode_loss(learner.logits(batch), batch.query_y).mean().item())
            for k in names:
                params[k].sub_(s * direction[k])
    return sum((grads[k] * direction[k]).sum().item() for k in names), (values[0] - values[1]) / (2 * h)


def accuracy_after_training(learner, images, steps: int, optimizer=None) -> float:
    """A learner meta-trained ``steps`` steps (meta-batch 4) on 5-way 1-shot episodes of ``images`` (e.g. the
    ``pattern_images`` fixture's), then its accuracy on 40 other episodes of them: does it learn a task family?"""
    from metalib.evaluate import evaluate
    from metalib.train import meta_train

    meta_train(learner, EpisodeSampler(images, ways=5, shots=1, queries=5, seed=1), steps=steps, meta_batch=4,
               optimizer=optimizer, progress=False)
    return evaluate(learner, EpisodeSampler(images, ways=5, shots=1, queries=5, seed=2), n_tasks=40).mean

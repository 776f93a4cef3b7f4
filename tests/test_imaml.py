"""iMAML: the implicit meta-gradient equals the exact one on a problem with a closed-form inner solution, approaches
MAML's unrolled gradient as the inner problem is solved, keeps memory flat in the inner steps; batched CG; the
proximal term of the one inner loop."""
from __future__ import annotations

import pytest
import torch

from metalib.algorithms import imaml, maml
from metalib.algorithms.imaml import batched_cg
from metalib.errors import ArgumentError
from metalib.inner import InnerConfig, adapt
from metalib.models import conv4, mlp
from metalib.problems import REGRESSION
from metalib.profiling import measure
from metalib.tasks import EpisodeSampler, TaskBatch

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LAM, D = 2.0, 3


def _linear_tasks(B=3, n=6, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    x = lambda: torch.randn(B, n, D, generator=g, dtype=torch.float64)  # noqa: E731
    w = torch.randn(B, D, 1, generator=g, dtype=torch.float64)
    sx, qx = x(), x()
    return TaskBatch(sx, sx @ w + 0.1, qx, qx @ w + 0.1)


def _closed_form_meta_gradient(theta: dict, batch: TaskBatch) -> dict:
    """d/dtheta of the mean query MSE at phi*(theta) = argmin MSE_support(phi) + LAM/2 |phi - theta|^2, exactly:
    phi* solves ((2/n) A^T A + LAM I) phi = (2/n) A^T y + LAM theta with A = [x, 1], differentiated by autograd."""
    t = torch.cat([theta["head.weight"].flatten(), theta["head.bias"]]).detach().requires_grad_()
    losses = []
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        a, n = torch.cat([sx, torch.ones(len(sx), 1, dtype=sx.dtype)], 1), len(sx)
        phi = torch.linalg.solve(2 / n * a.T @ a + LAM * torch.eye(D + 1, dtype=sx.dtype), 2 / n * a.T @ sy[:, 0] + LAM * t)
        losses.append(((qx @ phi[:D] + phi[D] - qy[:, 0]) ** 2).mean())
    g = torch.autograd.grad(torch.stack(losses).mean(), t)[0]
    return {"head.weight": g[:D].view(1, D), "head.bias": g[D:]}


def test_implicit_meta_gradient_equals_the_exact_one_on_a_closed_form_inner_problem():
    learner = imaml(mlp((D, 1), seed=0).double(), inner_lr=0.05, steps=400, lam=LAM, cg_steps=D + 1,
                    problem="regression")
    batch = _linear_tasks()
    grads, metrics = learner.meta_gradient(batch)
    exact = _closed_form_meta_gradient(learner.params(), batch)
    for k in exact:
        torch.testing.assert_close(grads[k], exact[k], rtol=1e-8, atol=1e-10)
    assert metrics["mse"] > 0
    few = imaml(mlp((D, 1), seed=0).double(), inner_lr=0.05, steps=400, lam=LAM, cg_steps=1, problem="regression")
    rough = few.meta_gradient(batch)[0]  # one CG step is not the solution: the check can fail
    assert max((rough[k] - exact[k]).abs().max().item() for k in exact) > 1e-4


def test_implicit_gradient_approaches_maml_through_the_solved_proximal_inner_loop():
    batch = _linear_tasks(seed=1)
    implicit = imaml(mlp((D, 1), seed=1).double(), inner_lr=0.05, steps=400, lam=LAM, cg_steps=D + 1,
                     problem="regression").meta_gradient(batch)[0]
    gaps = []
    for steps in (5, 400):  # MAML differentiating through `steps` steps of the same regularised inner loop
        unrolled = maml(mlp((D, 1), seed=1).double(), inner_lr=0.05, steps=steps, problem="regression")
        unrolled.inner = InnerConfig(steps=steps, lr=0.05, problem=REGRESSION, proximal=LAM)
        g = unrolled.meta_gradient(batch)[0]
        gaps.append(max((g[k] - implicit[k]).abs().max().item() for k in implicit))
    assert gaps[1] < 1e-8 < gaps[0]


@pytest.mark.filterwarnings("ignore:iMAML")  # untrained and unsolved on purpose: the test measures memory
def test_imaml_graph_memory_does_not_grow_with_inner_steps_and_maml_does():
    batch = EpisodeSampler(torch.randint(0, 255, (10, 20, 28, 28), generator=torch.Generator().manual_seed(0)).to(torch.uint8),
                           ways=5, shots=1, queries=2, seed=0).sample(0, 2)
    mib = {}
    for name, make in (("imaml", lambda k: imaml(conv4(5, hidden=8, seed=0), steps=k)),
                       ("maml", lambda k: maml(conv4(5, hidden=8, seed=0), steps=k))):
        mib[name] = [measure(lambda: make(k).meta_gradient(batch), "cpu")[1].graph_mib for k in (1, 8)]
    assert mib["imaml"][1] == pytest.approx(mib["imaml"][0], rel=0.05)
    assert mib["maml"][1] > 3 * mib["maml"][0]


def test_batched_cg_solves_each_task_and_the_proximal_term_pulls_towards_the_start():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(4, 6, 6, generator=g, dtype=torch.float64)
    a = m @ m.transpose(1, 2) + 6 * torch.eye(6, dtype=torch.float64)  # SPD per task
    b = {"w": torch.randn(4, 6, generator=g, dtype=torch.float64)}
    x = batched_cg(lambda p: {"w": (a @ p["w"].unsqueeze(-1)).squeeze(-1)}, b, iters=6)
    torch.testing.assert_close(x["w"], torch.linalg.solve(a, b["w"]), rtol=1e-9, atol=1e-10)
    batch = _linear_tasks()
    theta = {k: v.detach() for k, v in mlp((D, 1), seed=0).double().named_parameters()}
    far = adapt(mlp((D, 1)).double(), theta, batch, InnerConfig(steps=200, lr=0.05, first_order=True, problem=REGRESSION))
    near = adapt(mlp((D, 1)).double(), theta, batch, InnerConfig(steps=200, lr=0.05, first_order=True, problem=REGRESSION, proximal=10.0))  # lr * lam < 2: stable
    dist = lambda p: sum((p[k] - theta[k]).pow(2).sum() for k in p).item()  # noqa: E731
    assert dist(near) < 0.1 * dist(far)
    with pytest.raises(ArgumentError, match="proximal"):
        InnerConfig(proximal=-1.0)
    with pytest.raises(ArgumentError, match="lam > 0"):
        imaml(mlp((D, 1)), lam=0.0)


def test_train_cli_builds_imaml_with_its_settings():
    from metalib.train_cli import parse_args
    from metalib.training_run import learner_from_options, run_settings

    _, a = parse_args(["--algorithm", "imaml", "--proximal", "0.5", "--cg-steps", "3", "--inner-steps", "4"])
    learner = learner_from_options(a, torch.device("cpu"))
    assert (learner.name, learner.inner.proximal, learner.cg_steps, learner.inner.steps) == ("imaml", 0.5, 3, 4)
    assert run_settings(a)["proximal"] == 0.5 and "proximal" not in run_settings(parse_args([])[1])


def _exact_implicit_gradient(model, theta: dict, batch: TaskBatch, lam: float, hessian_at: str = "phi",
                             damping: float = 0.0) -> dict:
    """Independent of metalib's inner loop: per task, solve the proximal problem by Newton's method to machine
    precision, then g = (I + H / lam)^-1 grad L_query(phi*) with the full Hessian H taken at phi* (or, to show that
    the test can tell, at theta)."""
    from torch.func import functional_call

    names = list(theta)
    shapes, sizes = [theta[k].shape for k in names], [theta[k].numel() for k in names]
    unflat = lambda flat: dict(zip(names, [v.view(s) for v, s in zip(flat.split(sizes), shapes)]))  # noqa: E731
    start = torch.cat([theta[k].reshape(-1) for k in names])
    total = torch.zeros_like(start)
    for sx, sy, qx, qy in zip(batch.support_x, batch.support_y, batch.query_x, batch.query_y):
        support = lambda f: ((functional_call(model, unflat(f), (sx,)) - sy) ** 2).mean()  # noqa: E731
        query = lambda f: ((functional_call(model, unflat(f), (qx,)) - qy) ** 2).mean()  # noqa: E731
        prox = lambda f: support(f) + lam / 2 * (f - start).pow(2).sum()  # noqa: E731
        phi = start.clone()
        for _ in range(30):
            grad = torch.autograd.functional.jacobian(prox, phi)
            phi = phi - torch.linalg.solve(torch.autograd.functional.hessian(prox, phi), grad)
        assert torch.autograd.functional.jacobian(prox, phi).abs().max() < 1e-12
        h = torch.autograd.functional.hessian(support, phi if hessian_at == "phi" else start)
        eye = torch.eye(len(phi), dtype=phi.dtype)
        total += torch.linalg.solve(eye + h / (lam + damping), torch.autograd.functional.jacobian(query, phi))
    return unflat(total / batch.support_x.shape[0])


def _tanh_net_and_tasks(seed: int) -> tuple[torch.nn.Module, TaskBatch]:
    """A float64 tanh network (its Hessian moves with the weights) and two sine-regression tasks."""
    model = mlp((D, 5, 1), seed=0).double()
    model.features[1] = torch.nn.Tanh()
    g = torch.Generator().manual_seed(seed)
    sx, qx = torch.randn(2, 6, D, generator=g, dtype=torch.float64), torch.randn(2, 6, D, generator=g, dtype=torch.float64)
    w = torch.randn(2, D, 1, generator=g, dtype=torch.float64)
    return model, TaskBatch(sx, torch.sin(2 * sx @ w), qx, torch.sin(2 * qx @ w))


def test_implicit_meta_gradient_matches_an_exact_solve_on_a_smooth_non_linear_model():
    """The linear cases above have a constant Hessian, so a Hessian taken at theta instead of phi* passed them; a tanh
    network's Hessian moves with the weights, and the exact solve below takes it at phi*."""
    model, batch = _tanh_net_and_tasks(seed=0)
    learner = imaml(model, inner_lr=0.1, steps=1500, lam=LAM, cg_steps=30, problem="regression")
    theta = {k: v.detach() for k, v in learner.params().items()}
    grads, metrics = learner.meta_gradient(batch)
    assert metrics["inner_residual"] < 1e-9 and metrics["cg_residual"] < 1e-8 and metrics["cg_indefinite"] == 0
    exact = _exact_implicit_gradient(model, theta, batch, LAM)
    for k in exact:
        torch.testing.assert_close(grads[k], exact[k], rtol=1e-7, atol=1e-9)
    wrong = _exact_implicit_gradient(model, theta, batch, LAM, hessian_at="theta")
    assert max((wrong[k] - exact[k]).abs().max().item() for k in exact) > 1e-4  # the test can tell the two apart


def test_cg_damping_weights_the_identity_in_the_implicit_gradient_only():
    """``cg_damping`` d: the same inner solution (the proximal weight stays lambda), and g = (I + H / (lambda + d))^-1
    grad L_query(phi*) against an exact solve; the authors' code damps its system so (issue 30)."""
    model, batch = _tanh_net_and_tasks(seed=1)
    learner = imaml(model, inner_lr=0.1, steps=1500, lam=LAM, cg_steps=30, cg_damping=3.0, problem="regression")
    theta = {k: v.detach() for k, v in learner.params().items()}
    grads, metrics = learner.meta_gradient(batch)
    assert metrics["inner_residual"] < 1e-9 and metrics["cg_residual"] < 1e-8
    exact = _exact_implicit_gradient(model, theta, batch, LAM, damping=3.0)
    for k in exact:
        torch.testing.assert_close(grads[k], exact[k], rtol=1e-7, atol=1e-9)
    undamped = _exact_implicit_gradient(model, theta, batch, LAM)
    assert max((undamped[k] - exact[k]).abs().max().item() for k in exact) > 1e-4
    assert learner.describe()["cg_damping"] == 3.0
    with pytest.raises(ArgumentError, match="cg_damping must be >= 0"):
        imaml(mlp((D, 1), seed=0), cg_damping=-1.0)


def test_an_unsolved_inner_problem_and_an_indefinite_system_are_reported_and_warned_once():
    """iMAML in notebook 07 ran with its proximal gradient at 7% of its start; a Hessian eigenvalue below -lambda
    made conjugate gradient diverge. Both are now measured in the history and warned about."""
    import warnings

    from metalib.tasks import SinusoidTasks

    batch = SinusoidTasks(5, seed=0).batch(range(4))
    learner = imaml(mlp(seed=0), inner_lr=0.01, steps=5, problem="regression")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads, metrics = learner.meta_gradient(batch)
        learner.meta_gradient(batch)
    messages = [str(w.message) for w in caught]
    assert metrics["inner_residual"] > 0.1 and 0 < metrics["cg_indefinite"] <= 1
    assert len(messages) == 2 and "inner problem is not solved" in messages[0] and "not positive definite" in messages[1]
    assert all(torch.isfinite(v).all() for v in grads.values())
    # A = diag(2, 1, -1), b = 1: the first CG step has curvature 2 > 0 (x = 1.5 b); the next direction (1.5, 3, 6)
    # has curvature -22.5, where CG would diverge: it stops and keeps x = 1.5 b, residual |(-2, -0.5, 2.5)| / |b|
    a = torch.diag(torch.tensor([2.0, 1.0, -1.0], dtype=torch.float64)).expand(1, 3, 3)
    info: dict = {}
    b = {"w": torch.ones(1, 3, dtype=torch.float64)}
    x = batched_cg(lambda p: {"w": (a @ p["w"].unsqueeze(-1)).squeeze(-1)}, b, iters=3, info=info)
    torch.testing.assert_close(x["w"], 1.5 * b["w"])
    assert bool(info["indefinite"][0]) and info["residual"][0].item() == pytest.approx((10.5 / 3) ** 0.5)
    first = batched_cg(lambda p: {"w": -p["w"]}, b, iters=3, info=info)  # negative curvature at once: b itself
    torch.testing.assert_close(first["w"], b["w"])
    assert bool(info["indefinite"][0]) and torch.isnan(info["residual"][0])

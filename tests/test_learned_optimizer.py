"""metalib.single_task.learned_optimizer: exact meta-gradients, the SGD special case, meta-training, coordinatewise structure."""
from __future__ import annotations

import pytest
import torch

from metalib.errors import ArgumentError
from metalib.single_task.hyper import train
from metalib.single_task.learned_optimizer import (LearnedOptimizer, OptState, meta_train_optimizer, regression_family,
                                       run_optimizer, unroll)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_optimizer(seed: int = 0, **kw) -> LearnedOptimizer:
    """A float64 optimiser whose every weight matters (the default starts with a zero last layer)."""
    opt = LearnedOptimizer((8,), lr=0.05, seed=seed, **kw).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in opt.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return opt


@pytest.mark.parametrize("objective", ["train", "val"])
def test_meta_gradient_matches_finite_differences(objective):
    task = regression_family((3, 6, 1), n_train=16, n_val=16, dtype=torch.float64)(0)
    opt = _random_optimizer(use_params=True)
    theta0 = {k: v.detach() for k, v in task.params.items()}

    def meta_loss() -> torch.Tensor:
        return unroll(opt, task, theta0, opt.init_state(theta0), 3, objective=objective)[0]

    loss = meta_loss()
    weights = list(opt.parameters())
    grads = torch.autograd.grad(loss, weights)
    g = torch.Generator().manual_seed(7)
    direction = [torch.randn(w.shape, generator=g, dtype=w.dtype) for w in weights]
    analytic = sum((gr * d).sum() for gr, d in zip(grads, direction)).item()
    eps, values = 1e-6, []
    for sign in (1, -1):
        with torch.no_grad():
            for w, d in zip(weights, direction):
                w.add_(sign * eps * d)
            values.append(meta_loss().item())
            for w, d in zip(weights, direction):
                w.sub_(sign * eps * d)
    fd = (values[0] - values[1]) / (2 * eps)
    assert abs(fd) > 1e-4  # the meta-loss does depend on the weights along this direction
    print(f"meta-gradient {analytic:.10g}, finite differences {fd:.10g}, rel. error {abs(analytic - fd) / abs(fd):.2e}")
    assert abs(analytic - fd) / abs(fd) < 1e-5, (analytic, fd)


def test_first_order_meta_gradient_differs_from_exact():
    """second_order=False drops the gradient's dependence on theta: a different (approximate) meta-gradient."""
    task = regression_family((3, 6, 1), n_train=16, dtype=torch.float64)(0)
    opt = _random_optimizer()
    theta0 = {k: v.detach() for k, v in task.params.items()}
    exact, approx = (torch.autograd.grad(unroll(opt, task, theta0, opt.init_state(theta0), 3, second_order=so)[0],
                                         opt.log_lr)[0] for so in (True, False))
    assert torch.isfinite(approx) and not torch.allclose(exact, approx)


@pytest.mark.parametrize("batch", [None, 8])
def test_sgd_mode_reproduces_hyper_train(batch):
    task = regression_family((3, 8, 8, 1), n_train=16, batch=batch, dtype=torch.float64)(1)
    lr, steps = 0.06, 25  # exp(log(0.06)) == 0.06 in float64: hyper's log-stored lr is the same number
    expected_losses: list[float] = []
    expected = train(task.model, task.params, task.data, steps, lr=lr, losses=expected_losses)
    got, curve = run_optimizer(LearnedOptimizer.sgd(lr), task, steps)
    assert torch.tensor(lr, dtype=torch.float64).log().exp().item() == lr
    for k in expected:
        assert torch.equal(got[k], expected[k]), k  # bitwise
    assert curve["train_loss"].iloc[:steps].tolist() == expected_losses
    assert len(curve) == steps + 1
    # the unrolled (differentiable) path takes the same steps
    theta = {k: v.detach() for k, v in task.params.items()}
    opt = LearnedOptimizer.sgd(lr)
    _, unrolled, state = unroll(opt, task, theta, opt.init_state(theta), steps)
    assert state.t == steps
    for k in expected:
        torch.testing.assert_close(unrolled[k].detach(), expected[k], rtol=0, atol=1e-12)


def test_default_rule_starts_as_adam():
    """Before meta-training the rule is Adam(lr, betas=(0.9, 0.999)): the skip path reads m_0.9 / rms."""
    task = regression_family((3, 8, 1), n_train=16, dtype=torch.float64)(2)
    ours, _ = run_optimizer(LearnedOptimizer(lr=0.01).double(), task, 15)
    adam, _ = run_optimizer(lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.9, 0.999), eps=1e-8), task, 15)
    for k in adam:
        torch.testing.assert_close(ours[k], adam[k], rtol=1e-6, atol=1e-7)  # log_lr was rounded to float32


def test_meta_training_reduces_the_meta_loss():
    family = regression_family((2, 8, 1), n_train=16)
    opt = LearnedOptimizer((8,), lr=0.003)  # starts as Adam at a too-small learning rate

    def final_loss() -> float:
        return sum(run_optimizer(opt, family(1000 + s), 20)[1]["train_loss"].iloc[-1] for s in range(3)) / 3

    before = final_loss()
    history = meta_train_optimizer(opt, family, meta_steps=30, unroll_steps=5, horizon=20, meta_lr=0.03)
    after = final_loss()
    assert list(history.columns[:5]) == ["meta_step", "task", "t", "meta_loss", "time_s"]
    assert history["task"].max() == 7 and set(history["t"]) == {0, 5, 10, 15}
    print(f"final training loss after 20 steps: {before:.4f} before meta-training, {after:.4f} after")
    assert after < 0.8 * before, (before, after)


def test_state_shapes_and_coordinatewise_updates():
    torch.manual_seed(0)
    opt = _random_optimizer(betas=(0.3, 0.9), use_params=True)
    params = {"w": torch.randn(4, 3, dtype=torch.float64), "b": torch.randn(5, dtype=torch.float64)}
    state = opt.init_state(params)
    assert {k: tuple(v.shape) for k, v in state.moments.items()} == {"w": (4, 3, 3), "b": (5, 3)}
    assert opt.n_features == 1 + 2 + 1
    for _ in range(2):  # non-trivial state
        grads = {k: torch.randn_like(v) for k, v in params.items()}
        params, state = opt.step(params, grads, state)
    assert state.t == 2
    grads = {k: torch.randn_like(v) for k, v in params.items()}
    u, new = opt.updates(params, grads, state)
    assert {k: v.shape for k, v in u.items()} == {k: v.shape for k, v in params.items()}
    assert all(new.moments[k].shape == state.moments[k].shape for k in params)
    # permuting the entries of "w" (with its gradient and state) permutes its update; "b" is untouched
    perm = torch.randperm(12)

    def permuted(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(12, *x.shape[2:])[perm].reshape(x.shape)

    u2, _ = opt.updates({"w": permuted(params["w"]), "b": params["b"]}, {"w": permuted(grads["w"]), "b": grads["b"]},
                        OptState({"w": permuted(state.moments["w"]), "b": state.moments["b"]}, state.t))
    torch.testing.assert_close(u2["w"], permuted(u["w"]), rtol=1e-14, atol=0)
    assert torch.equal(u2["b"], u["b"])
    # the Jacobian of all updates with respect to all gradients is diagonal: entry i depends only on entry i
    flat = torch.cat([g.flatten() for g in grads.values()])

    def all_updates(f: torch.Tensor) -> torch.Tensor:
        gs = dict(zip(grads, (c.view_as(g) for c, g in zip(f.split([12, 5]), grads.values()))))
        return torch.cat([v.flatten() for v in opt.updates(params, gs, state)[0].values()])

    jac = torch.autograd.functional.jacobian(all_updates, flat)
    assert torch.count_nonzero(jac - torch.diag(torch.diagonal(jac))) == 0
    assert torch.count_nonzero(torch.diagonal(jac)) == 17


def test_run_optimizer_with_torch_optimizer_and_arguments():
    task = regression_family((2, 4, 1), n_train=8, dtype=torch.float64)(0)
    params, curve = run_optimizer(lambda ps: torch.optim.SGD(ps, lr=0.05), task, 10, val_every=5)
    expected = train(task.model, task.params, task.data, 10, lr=0.05)
    for k in expected:
        torch.testing.assert_close(params[k], expected[k], rtol=0, atol=1e-12)
    assert curve["val_loss"].notna().tolist() == [t % 5 == 0 for t in range(11)]
    with pytest.raises(ArgumentError, match="nothing to learn"):
        meta_train_optimizer(LearnedOptimizer.sgd(0.1), task, meta_steps=1)
    with pytest.raises(ArgumentError, match="unroll_steps"):
        meta_train_optimizer(LearnedOptimizer(), task, meta_steps=1, unroll_steps=10, horizon=5)
    with pytest.raises(ArgumentError, match="betas"):
        LearnedOptimizer(betas=(0.9, 1.0))
    with pytest.raises(ArgumentError, match="objective"):
        unroll(LearnedOptimizer(), task, task.params, LearnedOptimizer().init_state(task.params), 2, objective="x")

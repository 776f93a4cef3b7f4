"""metalib.single_task.hyper: unrolled hypergradients, hypergradient descent, grid and random search."""
from __future__ import annotations

import math

import pytest
import torch

from torch import nn

from metalib import mlp
from metalib.single_task.hyper import (hyper_values, hypergradient, hypergradient_descent, loss_on, make_hyper, meta_fit, train,
                           unrolled_train)
from metalib.single_task.search import grid_search, random_search


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(dtype=torch.float64, seed: int = 0):
    """A tiny regression problem and a small MLP, in ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 3, generator=g, dtype=dtype)
    w = torch.randn(3, 1, generator=g, dtype=dtype)
    y = torch.sin(x @ w)
    model = mlp((3, 8, 8, 1), seed=seed).to(dtype)
    params = {k: v.detach() for k, v in model.named_parameters()}
    return model, params, (x[:16], y[:16]), (x[16:], y[16:])


def _val_loss(model, params, hyper, tr, val, steps) -> float:
    theta = unrolled_train(model, params, hyper, tr, steps, create_graph=False)
    return loss_on(model, theta, val).item()


@pytest.mark.parametrize("key", ["log_lr", "log_wd"])
def test_hypergradient_matches_finite_differences(key):
    model, params, tr, val = _problem()
    steps, eps = 12, 1e-6
    hyper = make_hyper(params, lr=0.1, weight_decay=0.05)
    _, grads = hypergradient(model, params, hyper, tr, val, steps)
    with torch.no_grad():
        plus = {k: v.detach().clone() for k, v in hyper.items()}
        minus = {k: v.detach().clone() for k, v in hyper.items()}
        plus[key] += eps
        minus[key] -= eps
    fd = (_val_loss(model, params, plus, tr, val, steps) - _val_loss(model, params, minus, tr, val, steps)) / (2 * eps)
    assert abs(fd) > 1e-6  # a meaningful check: the loss does depend on the hyperparameter
    assert grads[key].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_hypergradient_per_tensor_schedule_and_init_match_finite_differences():
    model, params, tr, val = _problem()
    steps, eps = 6, 1e-6
    hyper = make_hyper(params, lr=0.1, schedule=steps, per_param="tensor", learn_init=True)
    _, grads = hypergradient(model, params, hyper, tr, val, steps)
    checks = [("log_lr", (2,)), ("log_lr/features.0.weight", ()), ("init/head.weight", (0, 3))]
    for key, idx in checks:
        plus = {k: v.detach().clone() for k, v in hyper.items()}
        minus = {k: v.detach().clone() for k, v in hyper.items()}
        plus[key][idx] += eps
        minus[key][idx] -= eps
        fd = (_val_loss(model, params, plus, tr, val, steps) - _val_loss(model, params, minus, tr, val, steps)) / (2 * eps)
        assert grads[key][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), key


def test_train_matches_unrolled_train_and_ignores_model_weights():
    model, params, tr, _ = _problem(torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hyper = make_hyper(params, lr=0.05, weight_decay=0.01)
    a = train(model, params, tr, 10, lr=0.05, weight_decay=0.01)
    b = unrolled_train(model, params, hyper, tr, 10)
    c = train(model, params, tr, 10, hyper=hyper)
    for k in a:
        torch.testing.assert_close(a[k], b[k].detach())
        torch.testing.assert_close(a[k], c[k])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_make_hyper_learn_selects_keys_and_hyper_values_are_readable():
    model, params, _, _ = _problem()
    hyper = make_hyper(params, lr=0.1, weight_decay=0.01, per_param="tensor", learn=["log_lr/"])
    assert not hyper["log_lr"].requires_grad and not hyper["log_wd"].requires_grad
    assert all(v.requires_grad for k, v in hyper.items() if k.startswith("log_lr/"))
    vals = hyper_values(hyper)
    assert vals["lr"] == pytest.approx(0.1) and vals["wd"] == pytest.approx(0.01)
    assert vals["lr/head.bias"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        make_hyper(params, lr=0.0)


def test_meta_fit_raises_a_too_small_learning_rate_and_lowers_val_loss():
    model, params, tr, val = _problem(torch.float32)
    hyper = make_hyper(params, lr=1e-3)
    hist = meta_fit(model, params, hyper, tr, val, 10, meta_steps=8, meta_lr=0.3)
    assert hist["lr"].iloc[-1] > 1e-3 * 5
    assert hist["val_loss"].iloc[-1] < hist["val_loss"].iloc[0]
    assert list(hist["meta_step"]) == list(range(9))


def _quadratic(dtype=torch.float64):
    """Least squares ``0.5 * mean((x w - y)^2)`` in 4 dims: a quadratic with curvature ~1."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g, dtype=dtype)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=dtype)
    model = nn.Linear(4, 1, bias=False).to(dtype)
    params = {"weight": torch.zeros(1, 4, dtype=dtype)}
    return model, params, (x, y)


@pytest.mark.parametrize("normalized,beta", [(False, 0.01), (True, 0.05)])
def test_hypergradient_descent_increases_a_too_small_lr(normalized, beta):
    model, params, data = _quadratic()
    lr0, steps = 1e-3, 60
    final, hist = hypergradient_descent(model, params, data, steps, lr=lr0, beta=beta, normalized=normalized)
    assert hist["lr"].iloc[-1] > 5 * lr0
    assert (hist["lr"].diff().dropna() >= 0).all()  # consistent descent direction: the lr only grows
    plain = train(model, params, data, steps, lr=lr0)
    assert loss_on(model, final, data).item() < 0.5 * loss_on(model, plain, data).item()


def test_hypergradient_descent_shrinks_a_too_large_lr():
    model, params, data = _quadratic()
    # curvature up to ~2 * max eigenvalue of x^T x / n; lr 0.8 oscillates, HD must pull it down
    _, hist = hypergradient_descent(model, params, data, 40, lr=0.8, beta=0.05, normalized=True)
    assert hist["lr"].iloc[-1] < 0.8


def test_grid_search_returns_the_best_trial():
    calls = []

    def objective(a: float, b: str) -> float:
        calls.append((a, b))
        return (a - 0.3) ** 2 + (0.0 if b == "good" else 1.0) if a != 0.5 else math.nan

    res = grid_search(objective, {"a": [0.0, 0.25, 0.5, 1.0], "b": ["bad", "good"]})
    assert res.n_trials == 8 == len(calls)
    assert res.best == {"a": 0.25, "b": "good"}
    assert res.best_value == pytest.approx(res.trials["value"].min())
    assert (res.trials.loc[res.trials["a"] == 0.5, "value"] == math.inf).all()  # NaN counts as +inf


def test_random_search_returns_the_best_trial_within_the_space():
    space = {"lr": (1e-4, 1.0, "log"), "wd": (0.0, 0.1), "act": ["relu", "tanh"]}

    def objective(lr: float, wd: float, act: str) -> float:
        return (math.log10(lr) + 2) ** 2 + wd + (act == "tanh")

    res = random_search(objective, space, n_trials=20, seed=3)
    t = res.trials
    assert res.n_trials == 20
    assert t["lr"].between(1e-4, 1.0).all() and t["wd"].between(0.0, 0.1).all()
    assert set(t["act"]) <= {"relu", "tanh"}
    best = t.loc[t["value"].idxmin()]
    assert res.best_value == best["value"] and res.best["lr"] == best["lr"]
    again = random_search(objective, space, n_trials=20, seed=3)
    assert again.trials.equals(t)  # seeded: reproducible

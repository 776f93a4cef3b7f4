"""Differentiable architecture search (DARTS; Liu, Simonyan and Yang, 2019): single-task meta-learning where the
meta-parameter is the network's *structure*.

A :class:`SearchSpace` is a small conv net for ``[C, H, W]`` images: a stem (3x3 conv + BN), ``cells`` cells each
followed by a 2x2 max-pool, and a linear head on a 3x3 average pool. A cell is a DAG: node 0 is its input, node
``i`` sums ``op_ji(node j)`` over every ``j < i``, and the cell outputs the sum of nodes ``1..nodes``; all cells
share one :data:`Architecture` (one op name per edge, in :meth:`SearchSpace.edges` order).

* :class:`SearchNetwork`: each edge mixes all ops, ``sum_k softmax(alpha_e)_k op_k(x)``; ``w`` and ``alphas``
  are separate parameter groups; BatchNorm without affine parameters (as DARTS) or running statistics.
* :func:`darts_search`: Adam on ``alphas`` (validation loss; :func:`architecture_gradient` of first, DARTS's
  second or exact order) alternating with SGD on ``w`` (training loss).
* :func:`derive`: per edge the strongest op *other than zero* (zero only takes weight from the others; DARTS ranks
  edges by it, here every edge is kept); :meth:`SearchSpace.network` and :func:`train_network` retrain it.
* :func:`random_architecture_search`: the baseline, for a number of trials or a time budget.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import ArgumentError
from ..profiling import History
from .examples import Examples, classification_scores, split_episode
from .search import SearchResult

__all__ = ["OPS", "DEFAULT_OPS", "Architecture", "SearchSpace", "MixedOp", "SearchNetwork", "Network", "split_images",
           "architecture_gradient", "darts_search", "derive", "train_network", "network_scores",
           "random_architecture_search", "mixture_table"]

Architecture = tuple[str, ...]
Order = Literal["first", "second", "exact"]
ALPHAS = "alphas"


class Zero(nn.Module):
    """The ``zero`` op: no connection (``0 * x``, keeping the shape)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mul(0.0)


def _conv(c: int, k: int, dilation: int, affine: bool) -> nn.Module:
    """ReLU - conv - BN, the DARTS op; without ``affine`` the BN has no parameters and no running statistics."""
    conv = nn.Conv2d(c, c, k, padding=dilation * (k - 1) // 2, dilation=dilation, bias=False)
    return nn.Sequential(nn.ReLU(), conv, nn.BatchNorm2d(c, affine=affine, track_running_stats=affine))


#: Candidate ops: ``name -> (channels, affine) -> module`` (stride 1, shape-preserving).
OPS: dict[str, Callable[[int, bool], nn.Module]] = {
    "zero": lambda c, affine: Zero(),
    "skip": lambda c, affine: nn.Identity(),
    "max_pool_3x3": lambda c, affine: nn.MaxPool2d(3, 1, 1),
    "avg_pool_3x3": lambda c, affine: nn.AvgPool2d(3, 1, 1, count_include_pad=False),
    "conv_3x3": lambda c, affine: _conv(c, 3, 1, affine),
    "conv_5x5": lambda c, affine: _conv(c, 5, 1, affine),
    "dil_conv_3x3": lambda c, affine: _conv(c, 3, 2, affine),
}
DEFAULT_OPS: tuple[str, ...] = ("zero", "skip", "max_pool_3x3", "avg_pool_3x3", "conv_3x3", "conv_5x5")


def _count(name: str, value: int, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ArgumentError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


@dataclass(frozen=True)
class SearchSpace:
    """The cell search space: ``ways`` classes, candidate ``ops``, ``nodes`` per cell, ``channels``, ``cells``."""

    ways: int
    ops: tuple[str, ...] = DEFAULT_OPS
    nodes: int = 3
    channels: int = 16
    cells: int = 1
    in_channels: int = 1

    def __post_init__(self) -> None:
        for name in ("ways", "nodes", "channels", "cells", "in_channels"):
            _count(name, getattr(self, name))
        object.__setattr__(self, "ops", tuple(self.ops))
        if any(o not in OPS for o in self.ops) or len(set(self.ops)) != len(self.ops):
            raise ArgumentError(f"ops must be distinct names from {sorted(OPS)}, got {list(self.ops)}")
        if not self.choices:
            raise ArgumentError("ops needs at least one op other than 'zero'")

    def edges(self) -> list[tuple[int, int]]:
        """The edges ``(j, i)`` (node ``j`` feeds node ``i``) in architecture order."""
        return [(j, i) for i in range(1, self.nodes + 1) for j in range(i)]

    @property
    def choices(self) -> tuple[str, ...]:
        """The ops a derived or random architecture uses on an edge: every op except ``zero``."""
        return tuple(o for o in self.ops if o != "zero")

    @property
    def size(self) -> int:
        """How many such architectures the space holds."""
        return len(self.choices) ** len(self.edges())

    def check(self, arch: Sequence[str]) -> Architecture:
        """``arch`` as a tuple, after checking its length and op names."""
        if len(arch := tuple(arch)) != len(self.edges()) or any(o not in OPS for o in arch):
            raise ArgumentError(f"an architecture needs {len(self.edges())} op names from {sorted(OPS)}, got {arch}")
        return arch

    def describe(self, arch: Sequence[str]) -> str:
        """One line: ``n1 = conv_3x3(n0); n2 = skip(n0) + max_pool_3x3(n1); ...``."""
        terms: dict[int, list[str]] = {i: [] for i in range(1, self.nodes + 1)}
        for (j, i), op in zip(self.edges(), self.check(arch)):
            terms[i] += [f"{op}(n{j})"] if op != "zero" else []
        return "; ".join(f"n{i} = " + (" + ".join(t) or "0") for i, t in terms.items())

    def random_architecture(self, generator: torch.Generator) -> Architecture:
        """A uniformly drawn architecture: one non-zero op per edge."""
        idx = torch.randint(len(self.choices), (len(self.edges()),), generator=generator)
        return tuple(self.choices[i] for i in idx.tolist())

    def supernet(self, *, seed: int | None = 0, device: torch.device | str = "cpu") -> SearchNetwork:
        """The :class:`SearchNetwork` of this space (``seed`` fixes ``w`` and ``alphas``)."""
        return self._build(None, seed, device)

    def network(self, arch: Sequence[str], *, seed: int | None = 0, device: torch.device | str = "cpu") -> Network:
        """The discrete :class:`Network` of ``arch``, freshly initialised (``seed``)."""
        return self._build(arch, seed, device)

    def _build(self, arch: Sequence[str] | None, seed: int | None, device: torch.device | str) -> Any:
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return (SearchNetwork(self) if arch is None else Network(self, arch)).to(device)


class MixedOp(nn.Module):
    """One edge: ``sum_k weights[k] * op_k(x)``; with a single op and no weights, just that op."""

    def __init__(self, channels: int, ops: Sequence[str], affine: bool) -> None:
        super().__init__()
        self.names = tuple(ops)
        self.ops = nn.ModuleList(OPS[o](channels, affine) for o in ops)

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        if weights is None:
            if len(self.ops) != 1:
                raise ArgumentError(f"a mixed op over {len(self.ops)} ops needs mixture weights")
            return self.ops[0](x)
        # zero contributes nothing (its weight still enters the softmax's normalisation)
        terms = [w * op(x) for w, op, name in zip(weights, self.ops, self.names) if name != "zero"]
        return torch.stack(terms).sum(0) if terms else x.mul(0.0)


class _CellNet(nn.Module):
    """Stem, ``cells`` cells of :class:`MixedOp` edges (edge ``e`` over ``edge_ops(e)``), head."""

    def __init__(self, space: SearchSpace, edge_ops: Callable[[int], Sequence[str]], affine: bool) -> None:
        super().__init__()
        self.space, c, n = space, space.channels, len(space.edges())
        self.stem = nn.Sequential(nn.Conv2d(space.in_channels, c, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c, affine=affine, track_running_stats=affine))
        self.cells = nn.ModuleList(nn.ModuleList(MixedOp(c, edge_ops(e), affine) for e in range(n))
                                   for _ in range(space.cells))
        self.head = nn.Linear(c * 9, space.ways)

    def mixture_weights(self) -> Tensor | None:
        return None

    def forward(self, x: Tensor) -> Tensor:
        weights, h = self.mixture_weights(), self.stem(x)
        for cell in self.cells:
            states, e = [h], 0
            for i in range(1, self.space.nodes + 1):
                node = 0
                for j in range(i):
                    node, e = node + cell[e](states[j], None if weights is None else weights[e]), e + 1
                states.append(node)
            h = F.max_pool2d(sum(states[1:]), 2)
        return self.head(F.adaptive_avg_pool2d(h, 3).flatten(1))


class SearchNetwork(_CellNet):
    """The DARTS supernet: every edge mixes all of ``space.ops`` with ``softmax(alphas[edge])``."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__(space, lambda e: space.ops, affine=False)
        self.alphas = nn.Parameter(1e-3 * torch.randn(len(space.edges()), len(space.ops)))

    def mixture_weights(self) -> Tensor:
        """``softmax(alphas)`` per edge: ``[edges, ops]``, each row sums to one."""
        return F.softmax(self.alphas, dim=-1)

    def weights(self) -> dict[str, Tensor]:
        """The network weights ``w``: every parameter except ``alphas``."""
        return {k: v for k, v in self.named_parameters() if k != ALPHAS}

    def derive(self) -> Architecture:
        """The discrete architecture of the current ``alphas`` (:func:`derive`)."""
        return derive(self.alphas, self.space.ops)


class Network(_CellNet):
    """A discrete network of the space: one op per edge (affine BN with running statistics)."""

    def __init__(self, space: SearchSpace, arch: Sequence[str]) -> None:
        self.arch = space.check(arch)
        super().__init__(space, lambda e: (self.arch[e],), affine=True)


def split_images(task: Any, pool: int = 1) -> tuple[Examples, Examples, Examples]:
    """:func:`metalib.single_task.examples.split_episode` (support -> train, queries -> val + test, standardised per pixel) with
    images kept as ``[N, C, H / pool, W / pool]`` for a conv net."""
    _, c, h, w = task.support_x[0].shape
    return tuple((x.view(-1, c, h // pool, w // pool), y) for x, y in split_episode(task, pool))  # type: ignore


def _loss(model: nn.Module, params: Mapping[str, Tensor], batch: Examples) -> Tensor:
    return F.cross_entropy(functional_call(model, dict(params), (batch[0],)), batch[1])


def _grads(loss: Tensor, tensors: Sequence[Tensor], create_graph: bool = False) -> list[Tensor]:
    return list(torch.autograd.grad(loss, list(tensors), create_graph=create_graph))


def architecture_gradient(model: SearchNetwork, train_batch: Examples, val_batch: Examples, *, order: Order = "second",
                          xi: float = 0.01, fd_radius: float = 0.01) -> tuple[float, Tensor]:
    """The validation loss and its gradient w.r.t. ``alphas`` at the model's current ``w`` and ``alphas``.

    * ``"first"``: ``grad_alpha L_val(w, alpha)``, ``w`` treated as independent of ``alpha`` (one forward-backward pass);
    * ``"second"`` (DARTS eq. 7-8): ``w' = w - xi grad_w L_train(w, alpha)``, then
      ``grad_alpha L_val(w', alpha) - xi (grad_alpha L_train(w+) - grad_alpha L_train(w-)) / (2 eps)``,
      ``w+- = w +- eps dw'``, ``dw' = grad_w' L_val(w', alpha)``, ``eps = fd_radius / |dw'|`` (four passes);
    * ``"exact"``: ``d/dalpha L_val(w - xi grad_w L_train(w, alpha), alpha)``, autograd through the virtual step
      (a double backward; the reference ``"second"`` is tested against).

    The loss returned is the one differentiated: at ``w`` for first order, at ``w'`` otherwise.
    """
    if order not in ("first", "second", "exact"):
        raise ArgumentError(f"order must be 'first', 'second' or 'exact', got {order!r}")
    if xi < 0 or fd_radius <= 0:
        raise ArgumentError(f"xi must be >= 0 and fd_radius > 0, got {xi}, {fd_radius}")
    with torch.enable_grad():
        w = {k: v.detach().requires_grad_() for k, v in model.weights().items()}
        alpha = model.alphas.detach().requires_grad_()
        if order == "first":
            val = _loss(model, {**w, ALPHAS: alpha}, val_batch)
            return val.item(), _grads(val, [alpha])[0]
        exact = order == "exact"
        g_w = _grads(_loss(model, {**w, ALPHAS: alpha}, train_batch), list(w.values()), create_graph=exact)
        w1 = {k: v - xi * g if exact else (v - xi * g).detach().requires_grad_() for (k, v), g in zip(w.items(), g_w)}
        val = _loss(model, {**w1, ALPHAS: alpha}, val_batch)
        if exact:
            return val.item(), _grads(val, [alpha])[0]
        *d_w, d_alpha = _grads(val, [*w1.values(), alpha])
        norm = torch.sqrt(sum((g * g).sum() for g in d_w))
        if xi == 0 or norm == 0:
            return val.item(), d_alpha
        eps = fd_radius / norm
        side = [_grads(_loss(model, {**{k: (v + s * eps * g).detach() for (k, v), g in zip(w.items(), d_w)},
                                     ALPHAS: alpha}, train_batch), [alpha])[0] for s in (1.0, -1.0)]
        return val.item(), (d_alpha - xi * (side[0] - side[1]) / (2 * eps)).detach()


def darts_search(model: SearchNetwork, train_data: Examples, val_data: Examples, steps: int, *, order: Order = "second",
                 w_lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 3e-4, alpha_lr: float = 3e-3,
                 alpha_weight_decay: float = 1e-3, xi: float | None = None, fd_radius: float = 0.01,
                 clip: float | None = 5.0, warmup: int = 0,
                 callback: Callable[[int, SearchNetwork], Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Search in place, full batch: ``steps`` alternating updates of ``alphas`` (Adam, betas 0.5/0.999, on the
    validation loss by :func:`architecture_gradient`; none in the first ``warmup`` steps) and of ``w`` (SGD with
    momentum on the training loss, gradient norm clipped at ``clip``).

    ``xi``, the virtual step's learning rate, defaults to ``w_lr`` as in DARTS (the virtual step is plain gradient
    descent, without momentum or weight decay). History columns: ``step``, ``val_loss`` (the one differentiated),
    ``train_loss``, ``arch`` (derived after the step), ``weights`` (``softmax(alphas)``, an array), ``time_s``
    (without ``callback(step, model)``, whose dict adds columns).
    """
    _count("steps", steps, 0)
    xi = w_lr if xi is None else xi
    w_params = list(model.weights().values())
    w_opt = torch.optim.SGD(w_params, lr=w_lr, momentum=momentum, weight_decay=weight_decay)
    a_opt = torch.optim.Adam([model.alphas], lr=alpha_lr, betas=(0.5, 0.999), weight_decay=alpha_weight_decay)
    model.train()
    history = History()
    for step in range(steps):
        val = math.nan
        if step >= warmup:
            val, model.alphas.grad = architecture_gradient(model, train_data, val_data, order=order, xi=xi,
                                                           fd_radius=fd_radius)
            a_opt.step()
        with torch.enable_grad():
            loss = F.cross_entropy(model(train_data[0]), train_data[1])
            for p, g in zip(w_params, _grads(loss, w_params)):
                p.grad = g
        if clip is not None:
            nn.utils.clip_grad_norm_(w_params, clip)
        w_opt.step()
        if not (math.isfinite(val) or step < warmup) or not math.isfinite(loss.item()):
            raise FloatingPointError(f"search step {step} diverged (val loss {val}); lower w_lr or alpha_lr")
        history.add({"step": step, "val_loss": val, "train_loss": loss.item(), "arch": model.derive(),
                     "weights": model.mixture_weights().detach().cpu().numpy()}, callback, step, model)
    return history.frame()


def derive(alphas: Tensor, ops: Sequence[str]) -> Architecture:
    """Per edge (row of ``alphas`` ``[edges, ops]``), the op with the largest weight, ``zero`` excluded."""
    ops = tuple(ops)
    if alphas.ndim != 2 or alphas.shape[1] != len(ops):
        raise ArgumentError(f"alphas must be [edges, {len(ops)}] for ops {ops}, got {tuple(alphas.shape)}")
    if not (keep := [k for k, o in enumerate(ops) if o != "zero"]):
        raise ArgumentError("ops needs at least one op other than 'zero'")
    return tuple(ops[keep[b]] for b in alphas.detach()[:, keep].argmax(-1).tolist())


def train_network(model: nn.Module, train_data: Examples, steps: int, *, lr: float = 0.05, momentum: float = 0.9,
                  weight_decay: float = 3e-4, clip: float | None = 5.0,
                  losses: list[float] | None = None) -> nn.Module:
    """Train ``model`` in place, full batch: ``steps`` steps of SGD with momentum; returns it in eval mode."""
    _count("steps", steps, 0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    for _ in range(steps):
        with torch.enable_grad():
            loss = F.cross_entropy(model(train_data[0]), train_data[1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if losses is not None:
            losses.append(loss.item())
    return model.eval()


def network_scores(model: nn.Module, data: Mapping[str, Examples]) -> dict[str, float]:
    """``{name}_loss`` and ``{name}_acc`` of ``model`` on each named batch; puts the model in eval mode."""
    return classification_scores(model.eval(), dict(model.named_parameters()), data)


def random_architecture_search(space: SearchSpace, train_data: Examples, val_data: Examples, steps: int, *,
                               n_trials: int | None = None, budget_s: float | None = None, seed: int = 0,
                               **train_kw: Any) -> SearchResult:
    """Random search: draw an architecture (``seed``), train it from scratch (``steps`` steps of
    :func:`train_network` with ``train_kw``, initialised with ``seed + trial``), score its validation loss; repeat
    until ``n_trials`` trials or ``budget_s`` seconds, whichever comes first. Within a budget no trial is started
    that the mean trial time says would end past it; one that still ends past it is recorded
    (``within_budget`` False) but never selected, and ``time_s`` is when the last trial within the budget ended (the
    compute the result stands on: at most ``budget_s``, unless even the first trial overran it). Equal compute
    means equal.

    Trial rows: ``trial``, one column per edge (``"j->i"``), ``arch``, ``value`` (val loss), ``val_acc``, ``time_s``
    (since the start), ``within_budget``; ``best`` is ``{"arch", "init_seed"}``. :func:`metalib.single_task.search.random_search`
    has no time budget, hence this loop; the result is the same :class:`~metalib.single_task.search.SearchResult`.
    """
    if (n_trials is None and budget_s is None) or (budget_s is not None and not budget_s > 0):
        raise ArgumentError(f"give n_trials, budget_s > 0 or both, got {n_trials}, {budget_s}")
    _count("n_trials", 1 if n_trials is None else n_trials)
    g, names = torch.Generator().manual_seed(seed), [f"{j}->{i}" for j, i in space.edges()]
    rows: list[dict[str, Any]] = []
    start, device = time.perf_counter(), train_data[0].device
    def fits() -> bool:  # the next trial, at the mean trial time so far, ends within the budget
        elapsed = time.perf_counter() - start
        return budget_s is None or elapsed + elapsed / len(rows) <= budget_s

    while not rows or ((n_trials is None or len(rows) < n_trials) and fits()):
        arch = space.random_architecture(g)
        net = train_network(space.network(arch, seed=seed + len(rows), device=device), train_data, steps, **train_kw)
        s = network_scores(net, {"val": val_data})
        rows.append({"trial": len(rows), **dict(zip(names, arch)), "arch": arch,
                     "value": s["val_loss"] if math.isfinite(s["val_loss"]) else math.inf, "val_acc": s["val_acc"],
                     "time_s": time.perf_counter() - start})
    trials = pd.DataFrame(rows)
    trials["within_budget"] = True if budget_s is None else (trials["time_s"] <= budget_s) | (trials["trial"] == 0)
    kept = trials[trials["within_budget"]]
    best = kept.loc[kept["value"].idxmin()]
    return SearchResult({"arch": best["arch"], "init_seed": seed + int(best["trial"])}, float(best["value"]),
                        trials, float(kept["time_s"].iloc[-1]))


def mixture_table(weights: Any, space: SearchSpace) -> pd.DataFrame:
    """``softmax(alphas)`` (a tensor or array) as a table: one row per edge (``"j->i"``), one column per op."""
    return pd.DataFrame(torch.as_tensor(weights).detach().cpu().numpy(),
                        index=[f"{j}->{i}" for j, i in space.edges()], columns=list(space.ops))

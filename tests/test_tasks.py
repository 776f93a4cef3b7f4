"""Episode samplers: shapes, labels, disjointness, split membership, determinism, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metalib.data import ClassSplit
from metalib.errors import UserError
from metalib.evaluate import evaluate
from metalib.models import conv4, mlp
from metalib.tasks import EpisodeSampler, SinusoidTasks, TaskBatch, task_seed
from metalib.utils import DeviceError, resolve_device

CLASSES, DRAWINGS, SIZE = 40, 20, 6


def coded_images(classes: int = CLASSES, drawings: int = DRAWINGS, first_class: int = 0) -> torch.Tensor:
    """uint8 [C, M, H, W] whose pixel (0, 0) is the class id and (0, 1) the drawing id."""
    x = torch.zeros(classes, drawings, SIZE, SIZE, dtype=torch.uint8)
    x[:, :, 0, 0] = torch.arange(first_class, first_class + classes, dtype=torch.uint8)[:, None]
    x[:, :, 0, 1] = torch.arange(drawings, dtype=torch.uint8)[None, :]
    x[:, :, 2:, 2:] = 255
    return x


def decode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class ids, drawing ids) of float images [..., 1, H, W] made by coded_images."""
    codes = (x[..., 0, 0, :2] * 255).round().long()
    return codes[..., 0], codes[..., 1]


# ------------------------------------------------------------------------- episodes


@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 15), (5, 5, 5), (20, 1, 5), (3, 2, 1), (40, 1, 19)])
def test_episode_shapes_labels_and_content(ways, shots, queries):
    sampler = EpisodeSampler(coded_images(), ways, shots, queries, seed=3)
    b = sampler.sample(2, 4)
    assert b.batch_size == len(b) == 4
    assert b.support_x.shape == (4, ways * shots, 1, SIZE, SIZE)
    assert b.query_x.shape == (4, ways * queries, 1, SIZE, SIZE)
    assert b.support_x.dtype == b.query_x.dtype == torch.float32
    assert b.support_y.shape == (4, ways * shots) and b.query_y.shape == (4, ways * queries)
    assert b.support_y.dtype == b.query_y.dtype == torch.int64
    assert 0 <= b.support_x.min() and b.support_x.max() == 1.0
    assert b.info["class_ids"].shape == (4, ways)
    assert b.info["task_index"].tolist() == [8, 9, 10, 11]

    s_cls, s_draw = decode(b.support_x)
    q_cls, q_draw = decode(b.query_x)
    for t in range(4):
        # each label exactly K (support) / Q (query) times
        assert torch.equal(torch.bincount(b.support_y[t], minlength=ways), torch.full((ways,), shots))
        assert torch.equal(torch.bincount(b.query_y[t], minlength=ways), torch.full((ways,), queries))
        cls = b.info["class_ids"][t]
        assert len(set(cls.tolist())) == ways  # distinct classes
        # the label indexes class_ids, in support and query alike
        assert torch.equal(s_cls[t], cls[b.support_y[t]])
        assert torch.equal(q_cls[t], cls[b.query_y[t]])
        assert torch.equal(s_draw[t], b.info["support_drawing_ids"][t])
        assert torch.equal(q_draw[t], b.info["query_drawing_ids"][t])
        for label in range(ways):
            s = s_draw[t][b.support_y[t] == label].tolist()
            q = q_draw[t][b.query_y[t] == label].tolist()
            assert len(set(s)) == shots and len(set(q)) == queries
            assert not set(s) & set(q), "support and query share a drawing"


def test_classes_only_from_the_given_split():
    split = ClassSplit("val", coded_images(classes=12, first_class=100), [f"c{i}" for i in range(12)])
    sampler = EpisodeSampler(split, 5, 1, 2, seed=0)
    b = sampler.sample(0, 50)
    cls, _ = decode(torch.cat([b.support_x, b.query_x], dim=1))
    assert set(cls.unique().tolist()) <= set(range(100, 112))
    assert len(set(cls.unique().tolist())) == 12  # over 50 tasks every class shows up
    assert b.info["class_ids"].min() >= 0 and b.info["class_ids"].max() < 12


def test_same_seed_and_index_give_identical_tasks_different_seeds_differ():
    a = EpisodeSampler(coded_images(), 5, 1, 5, seed=7)
    b = EpisodeSampler(coded_images(), 5, 1, 5, seed=7)
    c = EpisodeSampler(coded_images(), 5, 1, 5, seed=8)
    assert a.batch([3, 11]).equal(b.batch([3, 11]))
    assert a.task(5).equal(b.task(5))
    assert not a.task(5).equal(c.task(5))
    assert not torch.equal(a.task(5).info["class_ids"], a.task(6).info["class_ids"])
    # a task does not depend on what else is in the batch, nor on earlier sampling
    assert a.batch([9, 5])[1].equal(b.task(5))


def test_sample_is_independent_of_batching():
    sampler = EpisodeSampler(coded_images(), 5, 2, 3, seed=1)
    full = sampler.batch(range(0, 8))
    assert full.equal(TaskBatch.cat([sampler.batch(range(0, 4)), sampler.batch(range(4, 8))]))
    assert full.equal(TaskBatch.cat([sampler.task(i) for i in range(8)]))
    assert sampler.sample(1, 4).equal(full[4:8])
    assert sampler.sample(3, 2).equal(full[torch.tensor([6, 7])])


def test_task_seed_is_stable():
    # golden values: changing the seed mixing would silently change every experiment
    assert task_seed(0, 0) == 12035550249420947055
    assert task_seed(1, 0) != task_seed(0, 1)
    assert len({task_seed(s, i) for s in range(20) for i in range(200)}) == 4000


def test_float_images_used_as_is_and_channel_dim_kept():
    images = torch.rand(10, 6, 3, 8, 8, dtype=torch.float64)
    b = EpisodeSampler(images, 2, 1, 1, seed=0).task(0)
    assert b.support_x.shape == (1, 2, 3, 8, 8) and b.support_x.dtype == torch.float32
    c, d = b.info["class_ids"][0], b.info["support_drawing_ids"][0]
    assert torch.allclose(b.support_x[0], images[c, d].float())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(ways=20), "20-way needs 20 classes but split 'val' has 15; lower ways or use a bigger split"),
        (dict(shots=5, queries=20), "5 shots + 20 queries = 25 > 20 drawings per class"),
        (dict(ways=0), "ways must be a positive integer, got 0"),
        (dict(shots=-1), "shots must be a positive integer, got -1"),
        (dict(queries=0), "queries must be a positive integer, got 0"),
    ],
)
def test_episode_sampler_errors(kwargs, message):
    split = ClassSplit("val", coded_images(classes=15), [str(i) for i in range(15)])
    args = dict(ways=5, shots=1, queries=5) | kwargs
    with pytest.raises(ValueError) as err:
        EpisodeSampler(split, **args)
    assert message in str(err.value)


def test_episode_sampler_accepts_exactly_all_drawings_and_rejects_bad_tensors():
    b = EpisodeSampler(coded_images(), 5, 5, 15).task(0)  # 5 + 15 = 20 drawings: fine
    _, s = decode(b.support_x)
    _, q = decode(b.query_x)
    assert sorted(torch.cat([s[0, :5], q[0, :15]]).tolist()) == list(range(20))
    with pytest.raises(ValueError, match=r"got shape \(40, 20, 6\) \(rank 3\)"):
        EpisodeSampler(coded_images()[:, :, 0], 5, 1, 1)
    with pytest.raises(TypeError, match="uint8 or floating point"):
        EpisodeSampler(coded_images().long(), 5, 1, 1)
    with pytest.raises(ValueError, match="15 classes but the given images have 10"):
        EpisodeSampler(coded_images(classes=10), 15, 1, 1)
    sampler = EpisodeSampler(coded_images(), 5, 1, 1)
    with pytest.raises(ValueError, match="indices is empty"):
        sampler.batch([])
    with pytest.raises(ValueError, match="got -1"):
        sampler.batch([-1])
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        sampler.sample(0, 0)


# ------------------------------------------------------------------------ TaskBatch


def test_taskbatch_indexing_cat_and_to():
    b = EpisodeSampler(coded_images(), 3, 1, 2, seed=0).batch(range(5))
    assert b[2].batch_size == 1 and b[2].equal(b[2:3]) and b[-1].equal(b[4:5])
    assert b[[0, 3]].equal(TaskBatch.cat([b[0], b[3]]))
    assert b[torch.tensor([True, False, True, False, False])].equal(b[[0, 2]])
    moved = b.to("cpu")
    assert moved.equal(b) and moved.info.keys() == b.info.keys()
    with pytest.raises(IndexError, match="task 5 out of range for a TaskBatch of 5 tasks"):
        b[5]
    with pytest.raises(ValueError, match="info keys"):
        TaskBatch.cat([b, TaskBatch(b.support_x, b.support_y, b.query_x, b.query_y)])
    with pytest.raises(ValueError, match="query_y has shape"):
        TaskBatch(b.support_x, b.support_y, b.query_x, b.query_y[:2])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_episodes_on_cuda_match_cpu():
    cpu = EpisodeSampler(coded_images(), 5, 1, 5, seed=4)
    gpu = EpisodeSampler(coded_images(), 5, 1, 5, seed=4, device="cuda")
    assert gpu.images.is_cuda
    b = gpu.sample(3, 8)
    assert b.support_x.is_cuda and b.query_y.is_cuda and b.info["class_ids"].is_cuda
    assert b.to("cpu").equal(cpu.sample(3, 8))
    s = SinusoidTasks(5, seed=1, device="cuda").sample(0, 4)
    assert s.support_x.is_cuda and s.to("cpu").equal(SinusoidTasks(5, seed=1).sample(0, 4))


# ------------------------------------------------------------------------ sinusoids


def test_sinusoid_shapes_ranges_and_function():
    tasks = SinusoidTasks(shots=10, queries=7, seed=0)
    b = tasks.sample(0, 2000)
    assert b.support_x.shape == b.support_y.shape == (2000, 10, 1)
    assert b.query_x.shape == b.query_y.shape == (2000, 7, 1)
    assert b.support_x.dtype == b.support_y.dtype == torch.float32
    amp, ph = b.info["amplitude"], b.info["phase"]
    assert amp.shape == ph.shape == (2000,)
    assert 0.1 <= amp.min() < 0.3 and 4.8 < amp.max() <= 5.0
    assert 0.0 <= ph.min() < 0.1 and math.pi - 0.1 < ph.max() <= math.pi
    # amplitude, phase and inputs are drawn independently
    x0 = b.support_x[:, 0, 0]
    corr = torch.corrcoef(torch.stack([amp, ph, x0]))
    assert (corr - torch.eye(3)).abs().max() < 0.1, corr
    x = torch.cat([b.support_x, b.query_x], 1)
    assert -5.0 <= x.min() < -4.9 and 4.9 < x.max() <= 5.0
    # MAML convention: y = A * sin(x - phase)
    expected = amp[:, None, None] * torch.sin(x - ph[:, None, None])
    assert torch.allclose(torch.cat([b.support_y, b.query_y], 1), expected, atol=1e-5)
    assert not torch.equal(b.support_x[0], b.query_x[0, :7])  # support and query points differ


def test_sinusoid_convention_and_true_curve():
    assert SinusoidTasks.sinusoid(torch.tensor(math.pi / 2 + 1.0), 3.0, 1.0).item() == pytest.approx(3.0)
    tasks = SinusoidTasks(shots=5, amplitude=(2.0, 2.0), phase=(0.5, 0.5), x_range=(-1.0, 1.0))
    b = tasks.sample(0, 3)
    assert b.query_x.shape == (3, 5, 1)  # queries default to shots
    assert torch.allclose(b.info["amplitude"], torch.full((3,), 2.0))
    x, y = tasks.true_curve(b, num_points=50)
    assert x.shape == y.shape == (3, 50, 1)
    assert x[0, 0, 0] == -1.0 and x[0, -1, 0] == 1.0
    assert torch.allclose(y, 2.0 * torch.sin(x - 0.5))


def test_sinusoid_determinism_and_batching():
    a, b = SinusoidTasks(5, seed=2), SinusoidTasks(5, seed=2)
    assert a.sample(3, 4).equal(TaskBatch.cat([b.task(i) for i in range(12, 16)]))
    assert a.batch(range(8)).equal(TaskBatch.cat([a.batch(range(4)), a.batch(range(4, 8))]))
    assert not a.task(0).equal(SinusoidTasks(5, seed=3).task(0))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(shots=0), "shots must be a positive integer, got 0"),
        (dict(shots=5, queries=0), "queries must be a positive integer, got 0"),
        (dict(shots=5, amplitude=(5.0, 0.1)), "amplitude must satisfy finite low <= high, got (5.0, 0.1)"),
        (dict(shots=5, phase=(0.0, math.inf)), "phase must satisfy finite low <= high"),
        (dict(shots=5, x_range=(1.0, 1.0)), "x_range must satisfy finite low < high, got (1.0, 1.0)"),
        (dict(shots=5, x_range=(1.0,)), "x_range must be a (low, high) pair"),
    ],
)
def test_sinusoid_errors(kwargs, message):
    with pytest.raises(ValueError) as err:
        SinusoidTasks(**kwargs)
    assert message in str(err.value)


# -------------------------------------------------------------------- devices, counts


def make_sampler(kind: str, device):
    return EpisodeSampler(coded_images(), 5, 1, 5, device=device) if kind == "episodes" else SinusoidTasks(5, device=device)


@pytest.mark.parametrize("kind", ["episodes", "sinusoids"])
def test_samplers_resolve_devices_like_everything_else(kind, monkeypatch):
    for spelling in ("auto", "cpu", "CPU", " cpu ", torch.device("cpu")):
        if spelling == "auto":
            monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        sampler = make_sampler(kind, spelling)
        assert sampler.device == resolve_device(spelling) == torch.device("cpu")
        assert sampler.sample(0, 2).support_x.device == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "gpu", "meta", "cuda:x"])
@pytest.mark.parametrize("make", ["episodes", "sinusoids", "conv4", "mlp", "resolve_device"])
def test_unknown_device_is_one_line_listing_the_accepted_names(make, name):
    with pytest.raises(DeviceError) as err:
        {"conv4": lambda d: conv4(device=d), "mlp": lambda d: mlp(device=d),
         "resolve_device": resolve_device}.get(make, lambda d: make_sampler(make, d))(name)
    assert isinstance(err.value, UserError)
    assert str(err.value) == f"unknown device {name!r}; use one of: auto, cpu, cuda, cuda:N, mps"


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
@pytest.mark.parametrize("make", ["episodes", "sinusoids", "conv4"])
def test_cuda_without_a_gpu_says_to_use_cpu_or_auto(make, name, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError) as err:
        conv4(device=name) if make == "conv4" else make_sampler(make, name)
    msg = str(err.value)
    assert msg == f"device {name!r} was requested but no CUDA GPU is visible; use device='cpu' or 'auto'"


def test_numpy_integer_counts_are_accepted():
    n = np.int64
    a = EpisodeSampler(coded_images(), ways=n(5), shots=n(2), queries=np.int32(3), seed=n(7))
    b = EpisodeSampler(coded_images(), 5, 2, 3, seed=7)
    assert (a.ways, a.shots, a.queries, a.seed) == (5, 2, 3, 7) and type(a.ways) is int and type(a.seed) is int
    assert a.sample(n(2), n(4)).equal(b.sample(2, 4))
    assert a.batch(np.arange(3)).equal(b.batch([0, 1, 2])) and a.task(n(5)).equal(b.task(5))
    s = SinusoidTasks(n(5), queries=n(3), seed=n(1))
    assert s.sample(n(1), n(2)).equal(SinusoidTasks(5, queries=3, seed=1).sample(1, 2))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: SinusoidTasks(5).sample(0, 0), "batch_size must be a positive integer, got 0"),
        (lambda: SinusoidTasks(5).sample(0, np.int64(0)), "batch_size must be a positive integer, got np.int64(0)"),
        (lambda: SinusoidTasks(5).sample(-1, 2), "step must be a non-negative integer, got -1"),
        (lambda: evaluate(None, SinusoidTasks(5), n_tasks=0), "n_tasks must be a positive integer, got 0"),
        (lambda: evaluate(None, SinusoidTasks(5), batch_size=0), "batch_size must be a positive integer, got 0"),
        (lambda: EpisodeSampler(coded_images(), np.int64(0), 1, 1), "ways must be a positive integer, got np.int64(0)"),
        (lambda: EpisodeSampler(coded_images(), 5.0, 1, 1), "ways must be a positive integer, got 5.0"),
        (lambda: SinusoidTasks(True), "shots must be a positive integer, got True"),
        (lambda: SinusoidTasks(5).batch(np.array([0, -1])), "task indices must be integers in [0, 2**63), got np.int64(-1)"),
    ],
)
def test_zero_and_non_integer_counts_are_rejected_by_name(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value) == message

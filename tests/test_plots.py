"""metalib.plots and metalib.widgets: fast smoke and property tests on synthetic data (Agg backend)."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from metalib import EpisodeSampler, SinusoidTasks, evaluate, maml, mlp, pretrain  # noqa: E402
from metalib import plots, widgets  # noqa: E402
from metalib.data import ClassSplit  # noqa: E402
from metalib.evaluate import confidence_interval  # noqa: E402

CLASSES, DRAWINGS, SIZE = 12, 20, 8


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def class_coded_split(rotations: bool = True) -> ClassSplit:
    """Every image of class c is the constant (c + 1) * 10, so a drawn pixel tells its class."""
    values = (torch.arange(CLASSES, dtype=torch.uint8) + 1) * 10
    images = values.view(-1, 1, 1, 1).expand(CLASSES, DRAWINGS, SIZE, SIZE).contiguous()
    if rotations:
        names = [f"Alpha_bet/character{c // 4 + 1:02d}/rot{90 * (c % 4):03d}" for c in range(CLASSES)]
    else:
        names = [f"Alpha_bet/character{c + 1:02d}" for c in range(CLASSES)]
    return ClassSplit("coded", images, names)


def images_of(ax) -> list:
    return ax.get_images()


# ----------------------------------------------------------------------------------------- episodes

def test_image_mosaic_shape_and_fill():
    imgs = torch.ones(5, 3, 4)
    m = plots.image_mosaic(imgs, 2, 3, pad=1)
    assert m.shape == (2 * 3 + 1, 3 * 4 + 2)
    assert m[:3, :4].min() == 1.0 and m[-3:, -4:].max() == 0.0  # 6th cell is empty
    with pytest.raises(ValueError, match="do not fit"):
        plots.image_mosaic(imgs, 2, 2)


@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 2), (3, 4, 6), (12, 2, 1)])
def test_episode_grid_groups_images_by_label(ways, shots, queries):
    split = class_coded_split()
    batch = EpisodeSampler(split, ways, shots, queries, seed=1).sample(0, 2)
    fig = plots.episode_grid(batch, task=1, class_names=split.class_names, max_ways=ways, max_queries=10)
    assert len(fig.axes) == 2
    assert [len(images_of(ax)) for ax in fig.axes] == [1, 1]
    class_ids = batch.info["class_ids"][1].tolist()
    for ax, per_class in zip(fig.axes, (shots, queries)):
        mosaic = images_of(ax)[0].get_array()
        assert mosaic.shape == (ways * (SIZE + 2) - 2, per_class * (SIZE + 2) - 2)
        for label, cls in enumerate(class_ids):  # row `label` holds images of class `cls` only
            block = np.asarray(mosaic[label * (SIZE + 2): label * (SIZE + 2) + SIZE])
            block = block[:, [k * (SIZE + 2) + j for k in range(per_class) for j in range(SIZE)]]
            assert np.allclose(block, (cls + 1) * 10 / 255)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0].startswith("0: Alpha bet")


def test_episode_grid_caps_rows_and_rejects_regression():
    batch = EpisodeSampler(class_coded_split(), 12, 1, 1, seed=0).task(0)
    fig = plots.episode_grid(batch, max_ways=4)
    assert images_of(fig.axes[0])[0].get_array().shape[0] == 4 * (SIZE + 2) - 2
    with pytest.raises(ValueError, match="image episodes"):
        plots.episode_grid(SinusoidTasks(5).task(0))


def test_character_rotations_four_classes():
    split = class_coded_split()
    fig = plots.character_rotations(split, "Alpha_bet/character02", drawings=4)
    assert len(fig.axes) == 4
    for ax, cls in zip(fig.axes, range(4, 8)):
        assert len(images_of(ax)) == 1
        assert np.allclose(images_of(ax)[0].get_array()[:SIZE, :SIZE], (cls + 1) * 10 / 255)
    assert len(plots.character_rotations(split, 5).axes) == 4  # by class index
    with pytest.raises(ValueError, match="no rotated classes"):
        plots.character_rotations(class_coded_split(rotations=False), 0)


@pytest.mark.parametrize("n_train,n_test", [(2, 1), (3, 2)])
def test_task_structure_draws_every_task(n_train, n_test):
    split = class_coded_split()
    train = EpisodeSampler(split, 5, 1, 2, seed=0).sample(0, 4)
    test = EpisodeSampler(split, 5, 1, 2, seed=1).sample(0, 4)
    fig = plots.task_structure(train, test, n_train=n_train, n_test=n_test)
    assert len(fig.axes) == 1
    assert len(images_of(fig.axes[0])) == 2 * (n_train + n_test)  # a support and a query mosaic per task
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "meta-train" in texts and "meta-test" in texts and "5-way 1-shot" in texts


def test_short_class_name():
    assert plots.short_class_name("Old_Church/character07/rot090") == "Old Church 07 (90°)"
    assert plots.short_class_name("Latin/character01") == "Latin 01"


# ---------------------------------------------------------------------------------------- sinusoids

def test_sinusoid_family_one_line_per_task():
    tasks = SinusoidTasks(5, seed=0)
    b = tasks.batch(range(6))
    x, y = tasks.true_curve(b, num_points=50)
    fig = plots.sinusoid_family(x, y, support_x=b.support_x, support_y=b.support_y, max_tasks=4)
    ax = fig.axes[0]
    assert len(ax.lines) == 4 and len(ax.collections) == 4
    assert np.allclose(ax.lines[2].get_ydata(), y[2, :, 0].numpy())


@pytest.fixture(scope="module")
def sinusoid_learners():
    return {"MAML": maml(mlp(seed=0), inner_lr=0.01, problem="regression"),
            "pretrained": pretrain(mlp(seed=1), problem="regression")}


def test_adapted_predictions_match_the_learners_scores(sinusoid_learners):
    tasks = SinusoidTasks(5, queries=7, seed=2)
    b = tasks.batch(range(3))
    learner = sinusoid_learners["MAML"]
    preds = plots.adapted_predictions(learner, b, b.query_x, steps=(0, 2))
    assert set(preds) == {0, 2} and preds[0].shape == (3, 7)
    with torch.no_grad():
        assert np.allclose(preds[0], learner.model(b.query_x)[..., 0].numpy(), atol=1e-6)
    mse = ((preds[2] - b.query_y[..., 0].numpy()) ** 2).mean(1)
    assert np.allclose(mse, learner.evaluate_batch(b, steps=2).numpy(), rtol=1e-4)
    assert not np.allclose(preds[0], preds[2])
    shared = plots.adapted_predictions(learner, b, torch.linspace(-5, 5, 11), steps=(1,))  # one grid, [P]
    assert shared[1].shape == (3, 11)


def test_sinusoid_fits_grid(sinusoid_learners):
    tasks = SinusoidTasks(5, seed=0)
    b = tasks.batch(range(3))
    x, y = tasks.true_curve(b, num_points=40)
    preds = {name: plots.adapted_predictions(l, b, x, steps=(0, 1, 10)) for name, l in sinusoid_learners.items()}
    fig = plots.sinusoid_fits(x, y, b.support_x, b.support_y, preds)
    assert len(fig.axes) == 2 * 3
    for ax in fig.axes:
        assert len(ax.lines) == 1 + 3  # true function + 3 curves
        assert len(ax.collections) == 1  # support points
    assert [t.get_text() for t in fig.axes[2].get_legend().get_texts()][:3] == ["true function", "pre-update",
                                                                                "1 step"]


# ------------------------------------------------------------------------------------ curves, results

def test_mean_ci_matches_library_interval():
    scores = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    mean, ci = plots.mean_ci(scores)
    for j in range(3):
        m, c = confidence_interval(scores[:, j])
        assert math.isclose(mean[j], m, rel_tol=1e-9) and math.isclose(ci[j], c, rel_tol=1e-6)


def test_adaptation_curves_panels_lines_and_references():
    g = torch.Generator().manual_seed(0)
    curves = {f"K={k}": {"MAML": torch.rand(30, 11, generator=g), "pre": torch.rand(30, 11, generator=g) + 1}
              for k in (5, 10, 20)}
    ref = {"K=5": {"MAML (published)": {1: 0.67, 5: 0.38, 10: 0.35}}}
    fig = plots.adaptation_curves(curves, reference=ref)
    assert len(fig.axes) == 3
    assert [len(ax.lines) for ax in fig.axes] == [3, 2, 2]
    assert all(len(ax.collections) == 2 for ax in fig.axes)  # one CI band per curve
    mean, _ = plots.mean_ci(curves["K=10"]["pre"])
    assert np.allclose(fig.axes[1].lines[1].get_ydata(), mean)
    single = plots.adaptation_curves({"MAML": torch.rand(10, 4, generator=g)},
                                     reference={"paper": {1: 0.5}})
    assert len(single.axes) == 1 and len(single.axes[0].lines) == 2


def history_frame(steps=(100, 200, 300), val=True) -> pd.DataFrame:
    df = pd.DataFrame({"step": list(steps), "train_loss": [3.0, 2.0, 1.5], "train_mse": [3.0, 2.0, 1.5],
                       "time_s": [1.0, 2.0, 3.0]})
    if val:
        df["val_mse"] = [2.5, 1.8, 1.2]
        df["val_ci95"] = [0.3, 0.2, 0.2]
    return df


def test_training_history_axes_per_metric():
    fig = plots.training_history(history_frame())
    assert [ax.get_title() for ax in fig.axes] == ["train mse", "val mse"]  # train_loss == train_mse: dropped
    assert len(fig.axes[1].collections) == 1  # CI band
    runs = {"maml": history_frame(), "pretrain": history_frame(val=False).assign(train_loss=[1, 2, 3])}
    fig = plots.training_history(runs, x="time_s")
    assert [ax.get_title() for ax in fig.axes] == ["train loss", "train mse", "val mse"]
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 1]
    assert len(plots.training_history(history_frame(), metrics=["train_loss"]).axes) == 1
    with pytest.raises(ValueError, match="no train"):
        plots.training_history(pd.DataFrame({"step": [1], "time_s": [0.1]}))


def test_results_table_and_bars(sinusoid_learners):
    r = evaluate(sinusoid_learners["MAML"], SinusoidTasks(5, seed=3), n_tasks=20, steps=1)
    results = {"1 step": {"MAML": r, "pre": (2.0, 0.1)}, "10 steps": {"MAML": (0.5, 0.05), "pre": 1.9}}
    published = {"1 step": {"MAML": 0.67, "pre": 2.41}, "10 steps": {"MAML": 0.35}}
    table = plots.results_table(results, published=published)
    assert table.shape[0] == 4 and list(table.columns[:2]) == ["mean", "ci95"]
    assert math.isclose(table.loc[("1 step", "MAML"), "mean"], r.mean)
    assert table.loc[("1 step", "MAML"), "n_tasks"] == 20
    assert table.loc[("10 steps", "pre"), "published"] != table.loc[("10 steps", "pre"), "published"]  # NaN
    fig = plots.result_bars(results, published=published)
    bars = fig.axes[0].patches
    assert len(bars) == 2 * 4  # 2 groups x (2 series + 2 published series)
    flat = plots.results_table({"a": (0.9, 0.01), "b": 0.8}, percent=True)
    assert list(flat.index) == ["a", "b"] and math.isclose(flat.loc["a", "mean"], 90.0)
    acc = plots.result_bars({"a": (0.9, 0.01)}, metric="accuracy")
    assert math.isclose(acc.axes[0].patches[0].get_height(), 90.0)


# ------------------------------------------------------------------------------------------- widgets

def test_episode_browser_returns_widget_and_static_figure(capsys):
    import ipywidgets

    split = class_coded_split()
    w = widgets.episode_browser(split, ways=4, shots=2, queries=3, seed=1)
    assert isinstance(w, ipywidgets.Widget)
    assert {c.description for c in w.children if hasattr(c, "description")} >= {"ways N", "shots K", "queries",
                                                                                  "seed"}
    fig = w.static_figure
    assert fig is not None and len(fig.axes) == 2
    assert images_of(fig.axes[0])[0].get_array().shape[0] == 4 * (SIZE + 2) - 2
    assert widgets.episode_browser(split, static=False).static_figure is None


def test_episode_browser_explains_impossible_requests(capsys):
    split = class_coded_split()
    w = widgets.episode_browser(split, ways=15)
    assert w.static_figure is None
    assert "15-way needs 15 classes" in capsys.readouterr().out
    assert widgets.draw_episode(split, 5, 5, 16) is None
    assert "drawings per class" in capsys.readouterr().out


def test_sinusoid_view_returns_widget_and_static_figure(sinusoid_learners):
    import ipywidgets

    w = widgets.sinusoid_view(sinusoid_learners, amplitude=3.0, phase=0.5, shots=7, steps=4)
    assert isinstance(w, ipywidgets.Widget)
    ax = w.static_figure.axes[0]
    assert len(ax.lines) == 1 + 2 * len(sinusoid_learners)  # truth + (pre-update, adapted) per learner
    assert len(ax.collections[0].get_offsets()) == 7
    assert len(widgets.draw_sinusoid_adaptation(sinusoid_learners, steps=0).axes[0].lines) == 1 + 2


def test_sinusoid_task_is_the_requested_function():
    b = widgets.sinusoid_task(2.5, 1.0, 6, seed=3, num_points=30)
    assert b.support_x.shape == (1, 6, 1) and b.query_x.shape == (1, 30, 1)
    assert torch.allclose(b.support_y, 2.5 * torch.sin(b.support_x - 1.0))
    assert b.support_x.abs().max() <= 5.0
    assert torch.equal(b.support_x, widgets.sinusoid_task(2.5, 1.0, 6, seed=3).support_x)

"""metalib.viz and metalib.viz.widgets: fast smoke and property tests on synthetic data (Agg backend)."""
from __future__ import annotations

import base64
import math
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from metalib import EpisodeSampler, SinusoidTasks, evaluate, viz  # noqa: E402
from metalib.data import ClassSplit  # noqa: E402
from metalib.evaluate import adapted_predictions, confidence_interval  # noqa: E402
from metalib.viz import widgets  # noqa: E402
from metalib.viz.common import mean_and_ci, plural, steps_label  # noqa: E402

CLASSES, DRAWINGS, SIZE = 12, 20, 8
pytestmark = pytest.mark.usefixtures("close_figures")



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
    m = viz.image_mosaic(imgs, 2, 3, pad=1)
    assert m.shape == (2 * 3 + 1, 3 * 4 + 2)
    assert m[:3, :4].min() == 1.0 and m[-3:, -4:].max() == 0.0  # 6th cell is empty
    with pytest.raises(ValueError, match="do not fit"):
        viz.image_mosaic(imgs, 2, 2)


@pytest.mark.parametrize("ways,shots,queries", [(5, 1, 2), (3, 4, 6), (12, 2, 1)])
def test_episode_grid_groups_images_by_label(ways, shots, queries):
    split = class_coded_split()
    batch = EpisodeSampler(split, ways, shots, queries, seed=1).sample(0, 2)
    fig = viz.episode_grid(batch, task=1, class_names=split.class_names, max_ways=ways, max_queries=10)
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
    fig = viz.episode_grid(batch, max_ways=4)
    assert images_of(fig.axes[0])[0].get_array().shape[0] == 4 * (SIZE + 2) - 2
    with pytest.raises(ValueError, match="image episodes"):
        viz.episode_grid(SinusoidTasks(5).task(0))


def test_character_rotations_four_classes():
    split = class_coded_split()
    fig = viz.character_rotations(split, "Alpha_bet/character02", drawings=4)
    assert len(fig.axes) == 4
    for ax, cls in zip(fig.axes, range(4, 8)):
        assert len(images_of(ax)) == 1
        assert np.allclose(images_of(ax)[0].get_array()[:SIZE, :SIZE], (cls + 1) * 10 / 255)
    assert len(viz.character_rotations(split, 5).axes) == 4  # by class index
    with pytest.raises(ValueError, match="no rotated classes"):
        viz.character_rotations(class_coded_split(rotations=False), 0)


@pytest.mark.parametrize("n_train,n_test", [(2, 1), (3, 2)])
def test_task_structure_draws_every_task(n_train, n_test):
    split = class_coded_split()
    train = EpisodeSampler(split, 5, 1, 2, seed=0).sample(0, 4)
    test = EpisodeSampler(split, 5, 1, 2, seed=1).sample(0, 4)
    fig = viz.task_structure(train, test, n_train=n_train, n_test=n_test)
    assert len(fig.axes) == 1
    assert len(images_of(fig.axes[0])) == 2 * (n_train + n_test)  # a support and a query mosaic per task
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    assert "meta-train" in texts and "meta-test" in texts and "5-way 1-shot" in texts


def test_short_class_name():
    assert viz.short_class_name("Old_Church/character07/rot090") == "Old Church 07 (90°)"
    assert viz.short_class_name("Latin/character01") == "Latin 01"


# ---------------------------------------------------------------------------------------- sinusoids

def test_sinusoid_family_one_line_per_task():
    tasks = SinusoidTasks(5, seed=0)
    b = tasks.batch(range(6))
    x, y = tasks.true_curve(b, num_points=50)
    fig = viz.sinusoid_family(x, y, support_x=b.support_x, support_y=b.support_y, max_tasks=4)
    ax = fig.axes[0]
    assert len(ax.lines) == 4 and len(ax.collections) == 4
    assert np.allclose(ax.lines[2].get_ydata(), y[2, :, 0].numpy())



def test_adapted_predictions_match_the_learners_scores(sinusoid_learners):
    tasks = SinusoidTasks(5, queries=7, seed=2)
    b = tasks.batch(range(3))
    learner = sinusoid_learners["MAML"]
    preds = adapted_predictions(learner, b, b.query_x, steps=(0, 2))  # metalib.evaluate: what sinusoid_fits draws
    assert set(preds) == {0, 2} and preds[0].shape == (3, 7, 1)
    with torch.no_grad():
        assert torch.allclose(preds[0], learner.model(b.query_x), atol=1e-6)
    mse = ((preds[2] - b.query_y) ** 2).mean((1, 2))
    assert torch.allclose(mse, learner.evaluate_batch(b, steps=2), rtol=1e-4)
    assert not torch.allclose(preds[0], preds[2])
    shared = adapted_predictions(learner, b, torch.linspace(-5, 5, 11).unsqueeze(-1), steps=(1,))  # one grid [P, 1]
    assert shared[1].shape == (3, 11, 1)


def test_sinusoid_fits_grid(sinusoid_learners):
    tasks = SinusoidTasks(5, seed=0)
    b = tasks.batch(range(3))
    x, y = tasks.true_curve(b, num_points=40)
    preds = {name: adapted_predictions(l, b, x, steps=(0, 1, 10)) for name, l in sinusoid_learners.items()}
    fig = viz.sinusoid_fits(x, y, b.support_x, b.support_y, preds)
    assert len(fig.axes) == 2 * 3
    for ax in fig.axes:
        assert len(ax.lines) == 1 + 3  # true function + 3 curves
        assert len(ax.collections) == 1  # support points
    assert [t.get_text() for t in fig.axes[2].get_legend().get_texts()] == ["true function", "pre-update", "1 step",
                                                                            "10 steps", "support points"]
    assert np.allclose(fig.axes[0].lines[2].get_ydata(), preds["MAML"][1][0, :, 0].numpy())


def test_steps_labels_are_singular_for_one_step():
    assert [plural(n, "step") for n in (0, 1, 10)] == ["0 steps", "1 step", "10 steps"]
    assert [plural(n, "query", "queries") for n in (1, 3)] == ["1 query", "3 queries"]
    assert [steps_label(k) for k in (0, 1, np.int64(1), 2, "MAML")] == ["pre-update", "1 step", "1 step", "2 steps",
                                                                          "MAML"]
    split = class_coded_split()
    fig = viz.episode_grid(EpisodeSampler(split, 3, 2, 1, seed=0).task(0))
    assert "(1 query per class)" in fig._suptitle.get_text()
    fig = viz.task_structure(*(EpisodeSampler(split, 3, 1, 1, seed=s).sample(0, 2) for s in (0, 1)))
    assert "K = 1 labelled example each; 1 query per class" in " ".join(t.get_text() for t in fig.axes[0].texts)


# ------------------------------------------------------------------------------------ curves, results

def test_mean_and_ci_is_the_library_interval():
    scores = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    mean, ci = mean_and_ci(scores)
    assert isinstance(mean, np.ndarray) and isinstance(ci, np.ndarray) and mean.shape == ci.shape == (3,)
    for j in range(3):
        m, c = confidence_interval(scores[:, j])
        assert math.isclose(mean[j], m, rel_tol=1e-9) and math.isclose(ci[j], c, rel_tol=1e-6)


def test_adaptation_curves_panels_lines_and_references():
    g = torch.Generator().manual_seed(0)
    curves = {f"K={k}": {"MAML": torch.rand(30, 11, generator=g), "pre": torch.rand(30, 11, generator=g) + 1}
              for k in (5, 10, 20)}
    ref = {"K=5": {"MAML (published)": {1: 0.67, 5: 0.38, 10: 0.35}}}
    fig = viz.adaptation_curves(curves, reference=ref)
    assert len(fig.axes) == 3
    assert [len(ax.lines) for ax in fig.axes] == [3, 2, 2]
    assert all(len(ax.collections) == 2 for ax in fig.axes)  # one CI band per curve
    mean, ci = confidence_interval(curves["K=10"]["pre"], dim=0)
    assert np.allclose(fig.axes[1].lines[1].get_ydata(), mean.numpy())
    band = fig.axes[1].collections[1].get_paths()[0].vertices[:, 1]
    assert np.isclose(band.min(), (mean - ci).min().item()) and np.isclose(band.max(), (mean + ci).max().item())
    single = viz.adaptation_curves({"MAML": torch.rand(10, 4, generator=g)}, reference={"paper": {1: 0.5}},
                                   metric="saved_MB")
    assert single.axes[0].get_ylabel() == "saved (MB) (mean, 95% CI)"
    assert len(single.axes) == 1 and len(single.axes[0].lines) == 2


def history_frame(steps=(100, 200, 300), val=True) -> pd.DataFrame:
    df = pd.DataFrame({"step": list(steps), "train_loss": [3.0, 2.0, 1.5], "train_mse": [3.0, 2.0, 1.5],
                       "time_s": [1.0, 2.0, 3.0]})
    if val:
        df["val_mse"] = [2.5, 1.8, 1.2]
        df["val_ci95"] = [0.3, 0.2, 0.2]
    return df


def test_training_history_axes_per_metric():
    fig = viz.training_history(history_frame())
    assert [ax.get_title() for ax in fig.axes] == ["train mse", "val mse"]  # train_loss == train_mse: dropped
    assert len(fig.axes[1].collections) == 1  # CI band
    runs = {"maml": history_frame(), "pretrain": history_frame(val=False).assign(train_loss=[1, 2, 3])}
    fig = viz.training_history(runs, x="time_s")
    assert [ax.get_title() for ax in fig.axes] == ["train loss", "train mse", "val mse"]
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 1]
    assert len(viz.training_history(history_frame(), metrics=["train_loss"]).axes) == 1
    assert fig.axes[0].get_xlabel() == "training time (s)"
    with pytest.raises(ValueError, match="no train"):
        viz.training_history(pd.DataFrame({"step": [1], "time_s": [0.1]}))


@pytest.mark.parametrize("column,label", [("saved_MB", "saved (MB)"), ("time_s", "time (s)"),
                                          ("peak_memory_GiB", "peak memory (GiB)"), ("val_mse", "val mse"),
                                          ("accuracy (%)", "accuracy (%)"), ("seconds", "seconds"),
                                          ("tasks_seen", "tasks seen")])
def test_column_label_is_words(column, label):
    assert viz.column_label(column) == label


def test_training_history_labels_columns_in_words():
    df = history_frame().assign(tasks_seen=[800, 1600, 2400], saved_MB=[10.0, 20.0, 30.0])
    fig = viz.training_history(df, metrics=["saved_MB", "val_mse"], x="tasks_seen")
    assert [ax.get_title() for ax in fig.axes] == ["saved (MB)", "val mse"]
    assert [ax.get_xlabel() for ax in fig.axes] == ["tasks seen", "tasks seen"]
    assert viz.training_history(df).axes[0].get_xlabel() == "meta-iteration"


def test_results_table_and_bars(sinusoid_learners):
    r = evaluate(sinusoid_learners["MAML"], SinusoidTasks(5, seed=3), n_tasks=20, steps=1)
    results = {"1 step": {"MAML": r, "pre": (2.0, 0.1)}, "10 steps": {"MAML": (0.5, 0.05), "pre": 1.9}}
    published = {"1 step": {"MAML": 0.67, "pre": 2.41}, "10 steps": {"MAML": 0.35}}
    table = viz.results_table(results, published=published)
    assert table.shape[0] == 4 and list(table.columns[:2]) == ["mean", "ci95"]
    assert math.isclose(table.loc[("1 step", "MAML"), "mean"], r.mean)
    assert table.loc[("1 step", "MAML"), "n_tasks"] == 20
    assert table.loc[("10 steps", "pre"), "published"] != table.loc[("10 steps", "pre"), "published"]  # NaN
    fig = viz.result_bars(results, published=published)
    bars = fig.axes[0].patches
    assert len(bars) == 2 * 4  # 2 groups x (2 series + 2 published series)
    flat = viz.results_table({"a": (0.9, 0.01), "b": 0.8}, percent=True)
    assert list(flat.index) == ["a", "b"] and math.isclose(flat.loc["a", "mean"], 90.0)
    acc = viz.result_bars({"a": (0.9, 0.01)}, metric="accuracy")
    assert math.isclose(acc.axes[0].patches[0].get_height(), 90.0)
    assert acc.axes[0].get_ylabel() == "accuracy (%), 95% CI"
    assert viz.result_bars({"a": 3.0}, metric="saved_MB").axes[0].get_ylabel() == "saved (MB), 95% CI"


@pytest.mark.parametrize("given_axes", [False, True])
def test_result_bars_legend_covers_no_bar(given_axes):
    # high bars fill the axes, where a legend inside ("best") would have to sit on some of them
    results = {f"group {g}": {s: (0.95 - 0.01 * g, 0.01) for s in ("ProtoNet", "MAML", "pretrained")} for g in range(3)}
    published = {"group 0": {"ProtoNet": 0.98, "MAML": 0.97}}
    ax = plt.subplots(figsize=(6, 3), layout="constrained")[1] if given_axes else None
    fig = viz.result_bars(results, published=published, metric="accuracy", ax=ax, title="t")
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the axes
    assert not any(legend.overlaps(bar.get_window_extent()) for bar in ax.patches)
    assert legend.x1 <= fig.bbox.x1 + 1  # and inside the figure


def test_bilevel_picture_projects_the_given_vectors():
    g = torch.Generator().manual_seed(0)
    thetas = torch.cumsum(torch.randn(4, 30, generator=g), 0)  # 4 snapshots of 30 parameters
    grads = [torch.randn(30, generator=g) for _ in range(4)]
    steps = [torch.randn(5, 30, generator=g) for _ in range(4)]  # 5 tasks
    fig = viz.bilevel_picture(thetas, grads, steps, labels=[0, 100, 200, 300])
    upper, first, last = fig.axes
    assert len(upper.lines[0].get_xdata()) == 4 and {"0", "300"} <= {t.get_text() for t in upper.texts}
    for ax, d in ((first, steps[0]), (last, steps[-1])):
        assert len(ax.collections) == 5 + 2  # one point per task, theta and the tasks' mean
        lengths = np.hypot(*np.stack([c.get_offsets()[0] for c in ax.collections[:5]]).T)
        assert np.all(lengths <= d.norm(dim=1).numpy() + 1e-6)  # in-plane parts of the task steps
    assert "meta-iteration 300" in last.get_title()
    with pytest.raises(ValueError, match="per snapshot"):
        viz.bilevel_picture(thetas, grads[:3], steps)


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


def test_task_with_is_the_requested_function():
    b = SinusoidTasks(6).task_with(2.5, 1.0, seed=3, num_points=30)  # the task sinusoid_view draws
    assert b.support_x.shape == (1, 6, 1) and b.query_x.shape == (1, 30, 1)
    assert torch.allclose(b.support_y, 2.5 * torch.sin(b.support_x - 1.0))
    assert b.support_x.abs().max() <= 5.0
    assert torch.equal(b.support_x, SinusoidTasks(6).task_with(2.5, 1.0, seed=3).support_x)


def test_sinusoid_view_draws_the_adapted_predictions(sinusoid_learners):
    fig = widgets.draw_sinusoid_adaptation(sinusoid_learners, amplitude=3.0, phase=0.5, shots=7, steps=1, seed=2)
    task = SinusoidTasks(7).task_with(3.0, 0.5, seed=2)
    ax = fig.axes[0]
    assert np.allclose(ax.collections[0].get_offsets()[:, 0], task.support_x[0, :, 0].numpy())
    expected = adapted_predictions(sinusoid_learners["MAML"], task, task.query_x, steps=(0, 1))
    assert np.allclose(ax.lines[1].get_ydata(), expected[0][0, :, 0].numpy(), atol=1e-6)
    assert np.allclose(ax.lines[2].get_ydata(), expected[1][0, :, 0].numpy(), atol=1e-6)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "MAML, 1 step" in texts[2] and "7 support points" in texts
    assert ax.get_title().endswith("1 adaptation step")


# ------------------------------------------------------------------------ when the static figure shows


def in_kernel(monkeypatch):
    """Pretend to run under an IPython kernel (as in JupyterLab or under papermill)."""
    monkeypatch.setattr(widgets, "get_ipython", lambda: SimpleNamespace(kernel=object()))


def test_figure_mode_rule(monkeypatch):
    assert widgets.figure_mode() == "figure"  # no kernel: nothing could show a widget
    assert widgets.figure_mode(True) == "figure" and widgets.figure_mode(False) == "none"
    in_kernel(monkeypatch)
    assert widgets.figure_mode() == "fallback"
    assert widgets.figure_mode(True) == "figure" and widgets.figure_mode(False) == "none"
    for value, mode in (("1", "figure"), ("true", "figure"), ("0", "none"), ("no", "none")):
        monkeypatch.setenv(widgets.STATIC_ENV, value)
        assert widgets.figure_mode() == mode
        assert widgets.figure_mode(False) == "none"  # an explicit choice wins
    monkeypatch.setenv(widgets.STATIC_ENV, "maybe")
    with pytest.raises(ValueError, match="METALIB_STATIC_FIGURES"):
        widgets.figure_mode()


def test_widget_in_a_kernel_shows_its_default_figure_once(monkeypatch, displays):
    in_kernel(monkeypatch)
    w = widgets.episode_browser(class_coded_split(), ways=4, shots=2, queries=3, seed=1)
    assert len(displays.figures) == 1  # the live view's own drawing, nothing displayed beside the widget
    assert displays.figures[0] is w.static_figure  # drawn once, for the view and the fallback
    bundle = w._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # widget frontends render the live widget
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")  # viewers without widgets: the figure


def test_static_choice_and_environment(monkeypatch, displays):
    split = class_coded_split()
    in_kernel(monkeypatch)
    w = widgets.episode_browser(split, static=True)
    assert len(displays.figures) == 2 and displays.figures[1] is w.static_figure
    assert "image/png" not in w._repr_mimebundle_()  # shown on its own, not twice in a headless run
    monkeypatch.setenv(widgets.STATIC_ENV, "0")
    w = widgets.episode_browser(split)
    assert len(displays.figures) == 3 and w.static_figure is None and "image/png" not in w._repr_mimebundle_()
    monkeypatch.delenv(widgets.STATIC_ENV)
    monkeypatch.setattr(widgets, "get_ipython", lambda: None)  # no kernel: a script or a terminal
    widgets.episode_browser(split)
    assert len(displays.figures) == 5


# ------------------------------------------------------------------------------------ optional extras

def test_metalib_imports_without_the_notebook_extras():
    script = textwrap.dedent("""
        import sys
        import metalib
        assert "matplotlib" not in sys.modules and "ipywidgets" not in sys.modules
        for blocked, module in (("matplotlib", "metalib.viz"), ("ipywidgets", "metalib.viz.widgets")):
            sys.modules[blocked] = None  # as if not installed
            try:
                __import__(module)
            except ImportError as err:
                assert blocked in str(err) and "pip install 'metalib[notebooks]'" in str(err), err
            else:
                raise AssertionError(module + " imported without " + blocked)
            del sys.modules[blocked]
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_accuracy_against_time_draws_every_run_and_its_published_line():
    curves = {"maml": pd.DataFrame({"time_s": [60.0, 120.0], "mean": [0.9, 0.95], "ci95": [0.01, 0.01]}),
              "protonet": pd.DataFrame({"time_s": [30.0, 90.0], "mean": [0.97, 0.98], "ci95": [0.005, 0.004]})}
    fig = viz.accuracy_against_time(curves, published={"maml": 0.987})
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["maml", "maml: published", "protonet"]
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [1.0, 2.0])  # minutes
    np.testing.assert_allclose(ax.get_lines()[2].get_ydata(), [97.0, 98.0])
    plt.close(fig)

"""Prediction on new images: the same numbers as evaluation, every learner's query outputs, shipped models from
files, the command line, checkpoints of a run on your own folder, and bad input as one line."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from metalib import load_pretrained, pretrained_preprocess
from metalib.algorithms import REGISTRY, build_learner, learner_spec
from metalib.data import OMNIGLOT_PREPROCESS, ImagePreprocess
from metalib.errors import ArgumentError, UserError
from metalib.predict import learner_from_checkpoint, load_images, main, predict, predict_folders
from metalib.tasks import EpisodeSampler, SinusoidTasks
from fake_datasets import image_folder


def _sampler(problem: str):
    if problem == "regression":
        return SinusoidTasks(5, 4, seed=0)
    return EpisodeSampler(torch.randint(0, 256, (6, 5, 28, 28), dtype=torch.uint8), 3, 1, 2, seed=0)


@pytest.mark.parametrize("name, problem", [(n, p) for n in sorted(REGISTRY) for p in REGISTRY[n].problems])
def test_every_learner_scores_its_query_outputs(name, problem):
    """The contract prediction relies on: evaluate_batch scores exactly the outputs query_outputs returns."""
    learner = build_learner(name, learner_spec(name).settings.resolve({}, problem), problem=problem, ways=3, hidden=8)
    batch = _sampler(problem).batch([0, 1])
    for mode in ("transductive", "inductive"):
        outputs = learner.query_outputs(batch, batchnorm=mode)
        assert outputs.shape[:2] == batch.query_y.shape[:2]
        assert torch.equal(learner.problem.task_score(outputs, batch.query_y), learner.evaluate_batch(batch, batchnorm=mode))


@pytest.mark.parametrize("batchnorm", ["transductive", "inductive"])
def test_predicting_an_episode_reproduces_its_evaluation(omniglot_test_split, batchnorm):
    learner = load_pretrained("maml-omniglot-5w1s")
    sampler = EpisodeSampler(omniglot_test_split, 5, 1, 5, seed=7)
    batch = sampler.batch(range(4))
    for t in range(4):
        labels = [f"char{int(y)}" for y in batch.support_y[t]]
        result = predict(learner, batch.support_x[t], labels, batch.query_x[t], preprocess=OMNIGLOT_PREPROCESS,
                         batchnorm=batchnorm)
        assert result.classes == sorted(set(labels)) and result.probabilities.shape == (25, 5)
        assert torch.allclose(result.probabilities.sum(1), torch.ones(25))
        accuracy = sum(p == f"char{int(y)}" for p, y in zip(result.labels, batch.query_y[t])) / 25
        expected = learner.evaluate_batch(sampler.batch([t]), batchnorm=batchnorm)
        assert accuracy == pytest.approx(expected.item())


def test_shipped_models_predict_from_image_files(omniglot_test_split, tmp_path):
    """Omniglot drawings saved as PNG files (black strokes on white, as the dataset ships them) come back as the
    inputs the model was evaluated on, and are classified as the tensors are."""
    split = omniglot_test_split
    alphabets = {}  # one character of each of five alphabets, upright (within an alphabet 1-shot is much harder)
    for i, name in enumerate(split.class_names):
        if name.endswith("rot000"):
            alphabets.setdefault(name.split("/")[0], i)
    support, labels, queries = [], [], []
    for c, index in enumerate(list(alphabets.values())[:5]):
        for d in range(3):
            path = tmp_path / ("support" if d == 0 else "query") / f"c{c}" / f"{d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((255 - split.images[index, d]).numpy()).save(path)
            (support if d == 0 else queries).append(path)
        labels.append(f"c{c}")
    pre = pretrained_preprocess("protonet-omniglot-1shot")
    assert pre == OMNIGLOT_PREPROCESS
    x = load_images(queries, pre)
    first = list(alphabets.values())[0]
    assert torch.equal(x[0, 0], split.images[first, 1].float() / 255)  # the file gives the cached drawing back
    learner = load_pretrained("protonet-omniglot-1shot")
    from_files = predict_folders(learner, tmp_path / "support", [tmp_path / "query"], preprocess=pre)
    from_tensors = predict(learner, load_images(support, pre), labels, x, preprocess=pre)
    assert from_files.labels == from_tensors.labels
    assert torch.allclose(from_files.probabilities, from_tensors.probabilities, atol=1e-6)
    assert sum(lab == Path(q).parent.name for lab, q in zip(from_files.labels, from_files.queries)) >= 8
    table = from_files.table()
    assert list(table.columns[:3]) == ["query", "label", "probability"] and len(table) == 10


def test_bad_prediction_input_is_one_line(tmp_path):
    learner = load_pretrained("maml-omniglot-5w1s")
    x = torch.rand(3, 1, 28, 28)
    with pytest.raises(ArgumentError, match="head has 5 outputs, so it classifies 5 classes at a time; .* has 3"):
        predict(learner, x, ["a", "b", "c"], x, preprocess=OMNIGLOT_PREPROCESS)
    with pytest.raises(ArgumentError, match="2 support labels for 3 support images"):
        predict(learner, x, ["a", "b"], x, preprocess=OMNIGLOT_PREPROCESS)
    with pytest.raises(ArgumentError, match="at least 2"):
        predict(learner, x, ["a", "a", "a"], x, preprocess=OMNIGLOT_PREPROCESS)
    with pytest.raises(ArgumentError, match=r"query image 0 is a tensor of shape \(1, 32, 32\).*pass a file path"):
        predict(load_pretrained("protonet-omniglot-1shot"), x, ["a", "b", "c"], torch.rand(1, 1, 32, 32),
                preprocess=OMNIGLOT_PREPROCESS)
    with pytest.raises(UserError, match="does not exist"):
        predict(learner, torch.rand(5, 1, 28, 28), list("abcde"), [tmp_path / "nope.png"], preprocess=OMNIGLOT_PREPROCESS)
    sine = build_learner("maml", learner_spec("maml").settings.resolve({}, "regression"), problem="regression", ways=1)
    with pytest.raises(ArgumentError, match="trained for regression"):
        predict(sine, x, ["a", "b", "c"], x, preprocess=OMNIGLOT_PREPROCESS)


def test_the_command_line_prints_one_row_per_query(tmp_path, capsys):
    support = image_folder(tmp_path / "support", {f"k{i}": 1 for i in range(5)}, mode="L", image_size=(60, 60))
    queries = image_folder(tmp_path / "new", {"any": 3}, mode="L", seed=4, image_size=(50, 70))
    rc = main(["--model", "maml-omniglot-5w1s", "--support", str(support), "--query", str(queries),
               "--csv", str(tmp_path / "out.csv")])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and out[0].split()[:3] == ["query", "label", "probability"] and len(out) == 4
    assert (tmp_path / "out.csv").read_text().count("\n") == 4
    rc = main(["--model", "maml-omniglot-5w1s", "--support", str(tmp_path / "none"), "--query", str(queries)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: support folder") and err.count("\n") == 1


def test_a_run_on_your_own_folder_predicts_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    """Train on a folder of RGB images (three commands in the README: train, evaluate, predict)."""
    root = image_folder(tmp_path / "mine", {f"class{i:02d}": 5 + i % 3 for i in range(16)}, image_size=(30, 40))
    ckpt = tmp_path / "run.pt"
    from metalib.train_cli import run

    monkeypatch.setenv("METALIB_CACHE_DIR", str(tmp_path / "cache"))
    rc = run(["--dataset", str(root), "--algorithm", "protonet", "--image-size", "16", "--ways", "3", "--shots", "1",
              "--queries", "2", "--steps", "2", "--meta-batch", "1", "--val-tasks", "0", "--eval-tasks", "4",
              "--checkpoint", str(ckpt), "--no-progress"])
    assert rc == 0 and "test accuracy" in capsys.readouterr().out
    learner, pre = learner_from_checkpoint(ckpt)
    assert pre.size == 16 and pre.channels == 3 and pre.std != (1.0, 1.0, 1.0)  # normalised by the train classes
    assert learner.name == "protonet"
    support = image_folder(tmp_path / "support", {"x": 1, "y": 1}, image_size=(20, 20), seed=9)
    rows = predict_folders(learner, support, [root / "class00"], preprocess=pre).table()
    assert len(rows) == 5 and set(rows["label"]) <= {"x", "y"}
    assert ImagePreprocess.from_dict(pre.as_dict()) == pre

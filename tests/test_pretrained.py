"""Every shipped model re-evaluated against its manifest; the zoo's size and completeness."""
from __future__ import annotations

import json
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from metalib.data import omniglot_splits
from metalib.evaluate import evaluate
import metalib.pretrained as zoo
from metalib.algorithms.reptile import ReptileSettings
from metalib.pretrained import (ZOO, ZooError, available, file_sha256, load_pretrained, manifest, manifest_recipe,
                                migrate_manifest, weights_file)
from metalib.pretrained.export import zoo_test_sampler
from metalib.recipes import RECIPES, Recipe

MODELS = available()


def test_zoo_is_small_and_every_model_has_a_manifest():
    assert MODELS, "the zoo ships at least one model"
    weights = sorted(ZOO.glob("*.pt"))
    assert all((ZOO / f"{p.stem}.json").exists() for p in weights), "every model needs its manifest"
    assert sum(p.stat().st_size for p in ZOO.iterdir() if p.is_file()) < 10 * 2**20
    for name in MODELS:
        info = manifest(name)
        assert info["recipe"]["name"] == name in RECIPES and "argv" not in info
        for key in ("command", "git_commit", "machine", "torch", "wall_clock_s", "steps", "history", "curve"):
            assert info.get(key) is not None, f"{name}: manifest lacks {key}"
        for e in info["evaluation"]:
            assert e["n_tasks"] == 600 and 0 < e["ci95"] < 0.05 and e["batchnorm"]
        assert info["sha256"] == file_sha256(weights_file(name)), f"{name}: not the model file its manifest describes"
        if "weights" in info:  # another recipe's file, evaluated another way: a recipe that trains the same
            assert info["weights"] in MODELS and RECIPES[name].weights == info["weights"]
            assert not (ZOO / f"{name}.pt").exists()



@pytest.mark.parametrize("content", [
    "another model's file", b"", b"\x00\x01garbage" * 100, "truncated", "pickled object"])
def test_a_model_file_that_is_not_the_manifests_is_refused_in_one_line(own_zoo, content):
    """A FOMAML manifest with the MAML file loaded silently; damaged files gave IndexError, EOFError, a raw
    PytorchStreamReader error, or torch's advice to load with weights_only=False."""
    path = own_zoo / "fomaml-omniglot-5w1s.pt"
    if content == "another model's file":
        shutil.copy(own_zoo / "maml-omniglot-5w1s.pt", path)
    elif content == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif content == "pickled object":
        path.write_bytes(pickle.dumps(ValueError("not a model")))
    else:
        path.write_bytes(content)
    with pytest.raises(ZooError) as err:
        load_pretrained("fomaml-omniglot-5w1s")
    msg = str(err.value)
    assert msg.startswith(f"model file {path} is not the one its manifest ") and "SHA-256 differs" in msg
    assert "\n" not in msg and "weights_only" not in msg


@pytest.mark.parametrize("damage, expected", [
    (lambda text: text[:500], "is damaged"),
    (lambda text: "[1, 2]", "holds a list, not a manifest"),
    (lambda text: text.replace('"sha256"', '"sha256_gone"'), "lacks sha256"),
    (lambda text: text.replace('"learner": {', '"learner": {"no_such_setting": 1, ', 1), "records a recipe this metalib cannot read"),
])
def test_a_damaged_manifest_is_named_in_one_line_and_does_not_hide_the_others(own_zoo, damage, expected, capsys):
    path = own_zoo / "fomaml-omniglot-5w1s.json"
    path.write_text(damage(path.read_text()))
    with pytest.raises(ZooError) as err:
        load_pretrained("fomaml-omniglot-5w1s")
    assert str(err.value).startswith(f"manifest {path}") and expected in str(err.value)
    assert "\n" not in str(err.value) and "usage:" not in capsys.readouterr().err
    if expected != "records a recipe this metalib cannot read":  # results() reads the recipe's fields only
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = zoo.results()
        assert set(table["model"]) == {"maml-omniglot-5w1s"}
        assert any(str(path) in str(w.message) for w in caught)


@pytest.mark.parametrize("name", MODELS)
def test_shipped_models_recipe_is_still_the_recipe_of_that_name(name):
    """``--recipe NAME`` must still train what NAME's manifest records: a recipe edited after its model shipped
    (other steps, rates, episodes) fails here, so the model is retrained or the recipe renamed."""
    shipped, now = manifest_recipe(name), RECIPES[name]
    assert (shipped.options(), shipped.tests, shipped.batchnorm) == (now.options(), now.tests, now.batchnorm)


def test_a_manifest_written_before_typed_settings_still_loads_the_same_learner(own_zoo):
    """Manifests used to record the recipe's learner settings as flat fields and rebuild the learner by re-parsing
    a command line (``argv``); such a manifest (a real one, of the 7000-step Reptile model) migrates to the typed
    recipe. That model has left the zoo, so the weights of its 14 000-step successor (the same network) stand in."""
    old = json.loads((Path(__file__).parent / "fixtures" / "manifest-before-typed-settings.json").read_text())
    assert "argv" in old and "learner" not in old["recipe"] and old["recipe"]["inner_batches"] == 5
    new = migrate_manifest(old)
    now = RECIPES["reptile-omniglot-5w1s"].as_dict()  # its prose ("why") has been edited since; nothing else
    assert "argv" not in new and {**new["recipe"], "why": now["why"]} == now
    assert Recipe.from_dict(old["recipe"]).learner == ReptileSettings(inner_lr=0.4, inner_steps=5, inner_batches=5)
    shutil.copy(ZOO / "reptile-omniglot-5w1s-14k.pt", own_zoo / "reptile-omniglot-5w1s.pt")
    old["sha256"] = file_sha256(own_zoo / "reptile-omniglot-5w1s.pt")
    (own_zoo / "reptile-omniglot-5w1s.json").write_text(json.dumps(old))
    learner = load_pretrained("reptile-omniglot-5w1s")
    assert (learner.name, learner.inner.steps, learner.inner.lr, learner.inner.support_batches) == ("reptile", 5, 0.4, 5)


def test_results_label_each_model_by_its_recipe_variant():
    """Notebooks 04 and 05 label the table's rows by algorithm and variant, so no two models of one column share both."""
    from metalib.pretrained import results

    table = results()
    assert set(table["model"]) == set(MODELS)
    variants = dict(zip(table["model"], table["variant"]))
    assert variants["maml-omniglot-5w1s"] == "" and variants["maml-omniglot-5w1s-mb16"] == "mb16"
    assert not table.duplicated(["column", "algorithm", "variant", "batchnorm"]).any()
    assert (table["meta_batch"] == [manifest(m)["recipe"]["meta_batch"] for m in table["model"]]).all()


def test_unknown_model_names_the_available_ones():
    with pytest.raises(ValueError, match="available"):
        manifest("no-such-model")


CHECK_SUBSET = 20  # leading check tasks re-evaluated per model: a result reproduced to rounding holds on any subset
# fine-tuning trains a copy of the whole network on every task (25 SGD steps on up to 100 support images), and Relation
# Networks score every (query, class) pair through a conv net (6000 pairs of a 20-way task): seconds per task on a
# CPU, so 4 tasks per column, which a change to what they compute fails as surely
CHECK_SUBSET_OF = {"finetune": 4, "relation": 4}


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_scores_what_its_manifest_says(name):
    """Re-evaluate the first CHECK_SUBSET of the manifest's check tasks against their recorded right queries
    (``check_correct``; all check tasks where a manifest predates it): a change to the model, the sampler or the
    inner loop that changes what a shipped model computes fails here. The tolerance allows two query predictions
    of the subset to flip on another CPU's floating-point rounding, nothing more."""
    info = manifest(name)
    learner = load_pretrained(name)
    split = omniglot_splits("vinyals", splits=["test"])["test"]
    for e in info["evaluation"]:
        sampler = zoo_test_sampler(split, e["ways"], e["shots"], e["queries"], info["recipe"]["seed"])
        subset = CHECK_SUBSET_OF.get(info["recipe"]["algorithm"], CHECK_SUBSET)
        n = min(subset, e["check_tasks"]) if "check_correct" in e else e["check_tasks"]
        expected = sum(e["check_correct"][:n]) / (n * e["ways"] * e["queries"]) if "check_correct" in e \
            else e["check_mean"]
        with torch.random.fork_rng(devices=[]):
            got = evaluate(learner, sampler, n_tasks=n, steps=e["test_steps"], batchnorm=e["batchnorm"])
        one_query = 1 / (n * e["ways"] * e["queries"])
        assert abs(got.mean - expected) <= 2 * one_query + 1e-9, (
            f"{name} {e['ways']}w{e['shots']}s {e['batchnorm']}: {got.mean:.5f} now on {n} tasks, {expected:.5f} "
            f"in the manifest")


def test_every_manifest_records_the_right_queries_of_its_check_tasks():
    for name in MODELS:
        for e in manifest(name)["evaluation"]:
            correct = e.get("check_correct")
            assert correct is not None and len(correct) == e["check_tasks"], f"{name}: no check_correct"
            assert sum(correct) == round(e["check_mean"] * e["check_tasks"] * e["ways"] * e["queries"]), name


def test_train_recipe_trains_the_recipe_resumes_it_and_evaluates_it_like_the_zoo(tmp_path, omniglot_data_dir,
                                                                                  one_torch_thread):
    from metalib.checkpoints import load_checkpoint
    from metalib.errors import UserError
    from metalib.pretrained.export import recipe_results
    from metalib.train_cli import train_recipe

    ckpt, options = tmp_path / "run.pt", ["--steps", "3", "--ways", "5", "--val-tasks", "0", "--snapshot-every", "0"]
    run = dict(device="cpu", data_dir=omniglot_data_dir, progress=False, options=options)
    learner, history = train_recipe("protonet-omniglot-1shot", ckpt, **run)
    state = load_checkpoint(ckpt)
    assert state["step"] == 3 and state["run_settings"]["algorithm"] == "protonet"
    assert state["run_settings"]["ways"] == 5 and state["run_settings"]["lr_schedule"] == "step"  # recipe + override
    again, _ = train_recipe("protonet-omniglot-1shot", ckpt, **run)  # the same run: resumed, nothing retrained
    assert all(torch.equal(a, b) for a, b in zip(learner.state_dict().values(), again.state_dict().values()))
    rows = recipe_results(learner, "protonet-omniglot-1shot", n_tasks=4, data_dir=omniglot_data_dir)
    assert [(r["ways"], r["shots"], r["n_tasks"]) for r in rows] == [(5, 1, 4), (20, 1, 4)]
    assert all(0 < r["mean"] <= 1 and r["published"] for r in rows)
    with pytest.raises(UserError, match="unknown recipe"):
        train_recipe("no-such-recipe", ckpt, **run)


def test_reproduce_trains_each_recipe_into_the_run_folder_and_tabulates_it(tmp_path, omniglot_data_dir, one_torch_thread):
    from metalib.pretrained.export import reproduce

    table = reproduce(["protonet-omniglot-1shot"], tmp_path / "runs", device="cpu", data_dir=omniglot_data_dir, n_tasks=3,
                      progress=False, options=["--steps", "2", "--ways", "5", "--val-tasks", "0"])
    assert (tmp_path / "runs" / "protonet-omniglot-1shot.pt").exists()
    assert list(table["column"]) == ["5-way 1-shot", "20-way 1-shot"] and table["recipe"].eq("protonet-omniglot-1shot").all()
    assert table["reproduced (%)"].between(0, 100).all() and table["shipped (%)"].gt(90).all()
    assert list(table["published (%)"]) == ["98.8", "96.0"]


def test_recipe_results_evaluate_every_batchnorm_mode_of_the_recipe(monkeypatch, omniglot_data_dir):
    from dataclasses import replace

    from metalib.pretrained import export
    from metalib.recipes import get_recipe
    both = replace(get_recipe("protonet-omniglot-1shot"), batchnorm=("transductive", "inductive"),
                   published={"5w1s": "98.8", "5w1s inductive": "97.0"})
    monkeypatch.setattr(export, "get_recipe", lambda name: both)
    rows = export.recipe_results(load_pretrained("protonet-omniglot-1shot"), "protonet-omniglot-1shot", n_tasks=3,
                                 data_dir=omniglot_data_dir)
    assert [(r["ways"], r["batchnorm"], r["published"]) for r in rows] == [
        (5, "transductive", "98.8"), (5, "inductive", "97.0"), (20, "transductive", None), (20, "inductive", None)]


def test_export_ships_one_pretraining_that_every_transfer_method_shares(tmp_path, monkeypatch, omniglot_data_dir,
                                                                      one_torch_thread):
    """baseline-omniglot's run is exported once, without its 4800-class pre-training head; simpleshot-omniglot is a
    manifest that evaluates the same file its own way, with SimpleShot's feature mean on its curve's snapshots."""
    from dataclasses import replace

    from metalib import recipes
    from metalib.pretrained import export
    from metalib.tasks import ClassBatches
    from metalib.train_cli import train_recipe

    for name in ("baseline-omniglot", "simpleshot-omniglot"):  # the recipes, two steps long, tested on 5-way 1-shot
        monkeypatch.setitem(recipes.RECIPES, name, replace(RECIPES[name], steps=2, batch_size=16, snapshot_every=1,
                                                           val_every=1, tests=((5, 1),)))
    # the feature mean over two minibatches instead of the 96 000 training images
    monkeypatch.setattr(ClassBatches, "epoch_batches", lambda self, epoch=0: (self.task(i).query_x for i in range(2)))
    monkeypatch.setattr(zoo, "ZOO", tmp_path)
    monkeypatch.setattr(export, "ZOO", tmp_path)
    checkpoint = tmp_path / "runs" / "baseline.pt"
    train_recipe("baseline-omniglot", checkpoint, device="cpu", data_dir=omniglot_data_dir, progress=False)
    common = ["--checkpoint", str(checkpoint), "--command", "a test", "--eval-tasks", "3", "--check-tasks", "2",
              "--curve-tasks", "2"]
    with pytest.raises(SystemExit, match="export that first"):
        export.main(["simpleshot-omniglot", *common])
    assert export.main(["baseline-omniglot", *common]) == 0 and export.main(["simpleshot-omniglot", *common]) == 0
    assert zoo.available() == ["baseline-omniglot", "simpleshot-omniglot"]
    assert not (tmp_path / "simpleshot-omniglot.pt").exists()
    shipped = torch.load(tmp_path / "baseline-omniglot.pt")
    assert "feature_mean" in shipped and not any(k.startswith("classifier.") for k in shipped)
    info = manifest("simpleshot-omniglot")
    assert info["weights"] == "baseline-omniglot" and info["sha256"] == manifest("baseline-omniglot")["sha256"]
    assert len(info["curve"]["points"]) == 2 and info["evaluation"][0]["check_tasks"] == 2
    learner = load_pretrained("simpleshot-omniglot")
    assert learner.name == "simpleshot" and learner.feature_mean.abs().sum() > 0
    assert torch.equal(learner.model.features[0].weight, load_pretrained("baseline-omniglot").model.features[0].weight)


def test_benchmarks_md_carries_every_shipped_models_curve_as_the_manifests_say():
    """BENCHMARKS.md's table of accuracy against training time is generated from the manifests; shipping, dropping or
    re-exporting a model without regenerating it (python benchmarks/zoo_curves.py --write) fails here."""
    from metalib.pretrained.report import MARKERS, curves_markdown, time_to_accuracy

    text = (Path(__file__).resolve().parent.parent / "BENCHMARKS.md").read_text(encoding="utf-8")
    start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    assert 0 <= start < end, "BENCHMARKS.md lost the markers of the generated curve table"
    assert text[start:end + len(MARKERS[1])] == curves_markdown(), "run: python benchmarks/zoo_curves.py --write"
    assert set(time_to_accuracy()["model"]) == set(MODELS)


def test_time_to_accuracy_reads_a_curve_as_its_columns_say(own_zoo):
    """Near the end: the first snapshot within half a point of the last; the second half: from the snapshot nearest
    the middle of the run's steps (of two as near, the later one), not of its last snapshot's."""
    from metalib.pretrained.report import time_to_accuracy

    path = own_zoo / "fomaml-omniglot-5w1s.json"
    info = json.loads(path.read_text())
    info["steps"] = 1000
    info["curve"]["points"] = [{"step": step, "time_s": 60.0 * step, "cpu_s": 6.0 * step, "mean": mean, "ci95": 0.01}
                               for step, mean in ((1000, 0.96), (200, 0.8), (400, 0.9), (600, 0.956))]
    path.write_text(json.dumps(info))
    row = time_to_accuracy().set_index("model").loc["fomaml-omniglot-5w1s"]
    assert (row["near_step"], row["near_cpu_min"], row["near_accuracy"]) == (600, 60.0, 0.956)
    assert row["second_half_gain"] == pytest.approx(0.96 - 0.956)
    assert [a for _, a in row["snapshots"]] == [0.8, 0.9, 0.956, 0.96]
    assert row["final"] == info["evaluation"][0]["mean"]

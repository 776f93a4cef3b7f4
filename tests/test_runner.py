"""The notebook runner (metalib.runner) and metrics recorder (metalib.metrics) on the fixtures in tests/fixtures/."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from metalib.metrics import METRICS_ENV, load_metrics, record_metric, record_metrics
from metalib.runner import (NotebookFormatError, ProjectNotFoundError, compare_metrics, default_tolerance,
                            find_parameters_cell, find_project, main, make_baseline, notebook_parameters,
                            parse_cli_value, parse_parameters, profile_parameters, resolve_kernel, run_notebook,
                            select_notebooks)

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny.ipynb"


def _notebook(tmp_path: Path, name: str, *cells) -> Path:
    path = tmp_path / name
    nbformat.write(new_notebook(cells=[new_markdown_cell(f"# {name}"), *cells]), path)
    return path


def _params_cell(source: str):
    cell = new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]
    return cell


# --- parameters cell and profiles (no kernel) -------------------------------------------------------

def test_tiny_quick_and_full_profiles():
    assert profile_parameters(TINY, "quick") == {}
    assert profile_parameters(TINY, "full") == {"x": 10}
    assert notebook_parameters(TINY)["x"].quick == "1"


def test_full_comment_convention():
    source = "\n".join([
        "import math",
        "n_iterations = 300  # full: 60000  (paper: 60k meta-iterations)",
        "ways = (5, 20)      # full: (5, 20, 50)",
        "name: str = 'a # b'  # full: 'c d'  (spaces inside the literal)",
        "lr = 1e-3  # full: 0.001",
        "shots = [1,",
        "         5]  # full: [1, 5, 10]",
        "device = 'auto'  # a plain comment",
        "limit = None  # FULL: 1000",
    ])
    params = parse_parameters(source)
    assert list(params) == ["n_iterations", "ways", "name", "lr", "shots", "device", "limit"]
    assert profile_parameters(params, "full") == {"n_iterations": 60000, "ways": (5, 20, 50), "name": "c d",
                                                  "lr": 0.001, "shots": [1, 5, 10], "limit": 1000}
    assert not params["device"].has_full and params["device"].quick == "'auto'"


@pytest.mark.parametrize("source, message", [
    ("x = 1  # full: sixty thousand", "cannot read the full-profile value of 'x'"),
    ("# full: 3\nx = 1", "must trail a simple `name = value` assignment"),
    ("a = b = 1  # full: 2", "must trail a simple"),
    ("x = (", "not valid Python"),
])
def test_full_comment_errors(source, message):
    with pytest.raises(NotebookFormatError, match=message):
        parse_parameters(source)


def test_missing_and_duplicate_parameters_cell(tmp_path, capsys):
    missing = _notebook(tmp_path, "01_missing.ipynb", new_code_cell("x = 1"))
    duplicate = _notebook(tmp_path, "02_duplicate.ipynb", _params_cell("x = 1"), _params_cell("y = 2"))
    with pytest.raises(NotebookFormatError, match="no cell is tagged 'parameters'"):
        find_parameters_cell(nbformat.read(missing, as_version=4), missing)
    with pytest.raises(NotebookFormatError, match=r"2 cells are tagged 'parameters' \(cells \[1, 2\]\)"):
        notebook_parameters(duplicate)
    # The runner reports both as errors without starting a kernel.
    assert main(["run", "--notebooks-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "01_missing ERROR" in out and "no cell is tagged 'parameters'" in out
    assert "02_duplicate ERROR" in out and "2 cells are tagged 'parameters'" in out


def test_cli_values_and_selection(tmp_path):
    assert parse_cli_value("5") == 5 and parse_cli_value("[1, 2]") == [1, 2]
    assert parse_cli_value("'a'") == "a" and parse_cli_value("maml") == "maml"
    paths = [Path(n) for n in ("01_intro.ipynb", "02_maml.ipynb", "10_protonets.ipynb")]
    assert select_notebooks(paths, ["02", "proto"]) == [paths[1], paths[2]]
    assert select_notebooks(paths, ["1"]) == [paths[0]]
    assert select_notebooks(paths, None) == paths
    with pytest.raises(LookupError, match="matches no notebook"):
        select_notebooks(paths, ["07"])


def test_project_is_found_from_the_working_directory(tmp_path, monkeypatch, capsys):
    root = tmp_path / "project"
    (root / "tests" / "baselines").mkdir(parents=True)
    (root / "pyproject.toml").touch()
    (root / "notebooks").mkdir()
    _notebook(root / "notebooks", "01_intro.ipynb", _params_cell("x = 1  # full: 2"))
    _notebook(root / "notebooks", "02_broken.ipynb", new_code_cell("x = 1"))
    (root / "tests" / "baselines" / "01_intro.json").write_text('{"metrics": {}}')
    project = find_project(root / "notebooks")
    assert (project.notebooks_dir, project.output_root, project.baselines_dir) == \
        (root / "notebooks", root / "output", root / "tests" / "baselines")

    monkeypatch.chdir(root / "tests")
    assert main(["list"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].split()[:3] == ["01_intro", "01_intro.ipynb", "x=1"] and rows[1].endswith("yes")
    assert rows[2].split()[0] == "02_broken" and rows[2].endswith("no")
    # The output folder defaults to the project's output/<profile>/ (02_broken fails before a kernel starts).
    assert main(["run", "--only", "02"]) == 1
    assert f"executed notebooks and metrics in {(root / 'output' / 'quick').resolve()}/" in capsys.readouterr().out

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProjectNotFoundError):
        find_project()
    assert main(["list", "--notebooks-dir", str(root / "notebooks")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no project folder") and err.endswith("pass --baselines-dir\n")
    assert err.count("\n") == 1
    assert main(["list", "--notebooks-dir", str(root / "notebooks"), "--baselines-dir", str(tmp_path)]) == 0


def test_unknown_kernel_falls_back_to_this_interpreter():
    choice = resolve_kernel("no-such-kernel-for-metalib-tests")
    assert choice.current_interpreter and "not installed" in choice.note


# --- metrics recorder and baselines (no kernel) -----------------------------------------------------

class _FakeEval:
    """Stands in for metalib.EvalResult."""
    mean, ci95, n_tasks = 0.9, 0.01, 600


def test_record_metric_is_silent_and_kept_in_memory_interactively(tmp_path, monkeypatch, capsys):
    """Notebooks 07 and 08 printed up to 9 'metric name = ...' lines above their tables: bookkeeping, not results."""
    from metalib.metrics import recorded

    monkeypatch.delenv(METRICS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    record_metric("acc", 0.5, tolerance=0.1)
    assert capsys.readouterr().out == ""
    assert recorded()["acc"] == {"value": 0.5, "tolerance": 0.1}
    assert list(tmp_path.iterdir()) == []


def test_record_metric_writes_json(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "nb.metrics.json"
    monkeypatch.setenv(METRICS_ENV, str(path))
    record_metric("loss", np.float32(0.25))
    record_metric("acc", _FakeEval())
    record_metrics({"name": "maml", "steps": 3})
    record_metric("loss", 0.125, tolerance=0.01, note="replaced")
    metrics = load_metrics(path)
    assert list(metrics) == ["loss", "acc", "name", "steps"]
    assert metrics["loss"] == {"value": 0.125, "tolerance": 0.01, "note": "replaced"}
    assert metrics["acc"] == {"value": 0.9, "ci95": 0.01, "n_tasks": 600}
    with pytest.raises(TypeError, match="must be a float, int or str"):
        record_metric("bad", [1, 2])
    with pytest.raises(ValueError, match="finite number >= 0"):
        record_metric("bad", 1.0, tolerance=-1)


def test_tolerances_and_comparison():
    metrics = {"acc": {"value": 0.9, "ci95": 0.01}, "loss": {"value": 2.0}, "lr": {"value": 0.1, "tolerance": 0.5},
               "algo": {"value": "maml"}, "zero": {"value": 0.0}}
    assert default_tolerance(metrics["acc"]) == (pytest.approx(0.03), "3 x ci95")
    assert default_tolerance(metrics["loss"]) == (pytest.approx(0.1), "5% relative")
    assert default_tolerance(metrics["lr"]) == (0.5, "recorded by the notebook")
    assert default_tolerance(metrics["algo"]) == (None, "exact")
    baseline = make_baseline("nb.ipynb", metrics)
    assert compare_metrics(metrics, baseline).ok
    run = {"acc": {"value": 0.87}, "loss": {"value": 2.11}, "algo": {"value": "anil"}, "zero": {"value": 0.0},
           "extra": {"value": 1}}
    result = compare_metrics(run, baseline)
    failed = {line.split(":")[0] for line in result.failures}
    assert failed == {"loss", "algo", "lr"}  # acc is within 3 x ci95; lr is missing
    assert any("lr: missing" in line for line in result.failures)
    assert result.new == ["extra"]


# --- running notebooks (each starts a kernel) -------------------------------------------------------

def test_run_quick_records_metrics_and_baseline(tmp_path, capsys):
    out, baselines = tmp_path / "out", tmp_path / "baselines"
    rc = main(["run", "--notebooks-dir", str(FIXTURES), "--only", "tiny", "--output-dir", str(out),
               "--update-baselines", "--baselines-dir", str(baselines)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert json.loads((out / "tiny.metrics.json").read_text()) == {"y": {"value": 2}}
    executed = nbformat.read(out / "tiny.ipynb", as_version=4)
    assert executed.cells[2].execution_count is not None
    summary = printed[printed.index("notebook"):]
    assert "tiny" in summary and " ok " in summary and "y=2" in summary
    assert str(out) in printed
    baseline = json.loads((baselines / "tiny.json").read_text())
    assert baseline["profile"] == "quick"
    assert baseline["metrics"] == {"y": {"value": 2, "tolerance": pytest.approx(0.1), "basis": "5% relative"}}


def test_run_full_profile_with_fallback_kernel(tmp_path):
    result = run_notebook(TINY, tmp_path, profile="full", kernel=resolve_kernel("no-such-kernel-for-metalib"))
    assert result.ok, result.error
    assert result.parameters == {"x": 10}
    assert result.metrics == {"y": {"value": 20}}
    assert result.metrics_path == tmp_path / "tiny.metrics.json" and result.output_path.exists()


def test_parameter_override_beats_profile(tmp_path):
    rc = main(["run", "--notebooks-dir", str(FIXTURES), "--only", "tiny", "--profile", "full",
               "-p", "x", "5", "--output-dir", str(tmp_path)])
    assert rc == 0
    assert load_metrics(tmp_path / "tiny.metrics.json") == {"y": {"value": 10}}


def test_failing_notebook_names_the_cell(tmp_path, capsys):
    # Both fixtures, in parallel; -p n only reaches failing.ipynb, whose error then reads "boom 6".
    rc = main(["run", "--notebooks-dir", str(FIXTURES), "--jobs", "2", "-p", "n", "5",
               "--output-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 1
    assert "failing FAILED: cell 3 (In [4]) raised ValueError: boom 6" in printed
    assert "1 of 2 notebook(s) failed: failing" in printed
    assert load_metrics(tmp_path / "tiny.metrics.json") == {"y": {"value": 2}}
    assert not (tmp_path / "failing.metrics.json").exists()



def test_timeout_stops_the_notebook_and_marks_the_cell_in_the_executed_notebook(tmp_path):
    """A notebook stopped by a 3 s timeout in its sleeping cell 2, before cell 3. The executed notebook marks the
    cell, as papermill marks a cell that raised; it used to save every cell as completed, without an exception."""
    slow = _notebook(tmp_path, "slow.ipynb", _params_cell("seconds = 60"),
                     new_code_cell("import time\ntime.sleep(seconds)"), new_code_cell("print('never reached')"))
    timed_out = run_notebook(slow, tmp_path / "out", timeout=3)
    assert timed_out.status == "timeout"
    assert "3 s timeout in cell 2" in timed_out.error
    assert timed_out.runtime_s < 30
    executed = nbformat.read(timed_out.output_path, as_version=4)
    status = [(cell.metadata.papermill["status"], cell.metadata.papermill["exception"]) for cell in executed.cells]
    assert status[2] == ("failed", True)
    assert status[3] == ("pending", None)
    assert executed.metadata.papermill["exception"] is True


def test_an_output_dir_that_is_a_file_or_read_only_is_one_line_before_any_notebook(tmp_path, capsys, monkeypatch):
    """A file or a read-only folder as --output-dir gave a FileExistsError / PermissionError traceback."""
    (tmp_path / "afile").write_text("mine")
    rc = main(["run", "--notebooks-dir", str(FIXTURES), "--only", "tiny", "--output-dir", str(tmp_path / "afile" / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: --output-dir {tmp_path / 'afile' / 'x'}: {tmp_path / 'afile'} is a file, not a " \
                              f"folder; choose another folder"
    import tempfile

    def read_only(*a, **k):  # as a read-only folder answers (root ignores the mode bits)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    rc = main(["run", "--notebooks-dir", str(FIXTURES), "--only", "tiny", "--output-dir", str(tmp_path / "ro")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: --output-dir {tmp_path / 'ro'} cannot be written (Permission denied); choose a " \
                              f"writable folder"


def test_a_failed_save_of_the_executed_notebook_keeps_the_previous_one(tmp_path, monkeypatch):
    """papermill saved the output notebook in place after every cell: a full disk left a truncated notebook."""
    import papermill

    out = tmp_path / "tiny.ipynb"
    out.write_text("the previous run's notebook")

    def full_disk(src, dst, **kw):
        with open(dst, "w") as f:
            f.write('{"cells": [')  # half a notebook, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(papermill, "execute_notebook", full_disk)
    result = run_notebook(TINY, tmp_path)
    assert result.status == "error" and "No space left on device" in result.error
    assert out.read_text() == "the previous run's notebook"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.ipynb"]


def test_partial_notebooks_of_killed_runs_are_swept_and_nothing_else(tmp_path):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, mine = tmp_path / f".tiny.partial{dead.pid}-1234.ipynb", tmp_path / ".tiny.notes.ipynb"
    stale.write_text("{}")
    mine.write_text("{}")
    result = run_notebook(TINY, tmp_path)
    assert result.ok and not stale.exists() and mine.exists()

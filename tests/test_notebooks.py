"""Every notebook in notebooks/: committed clean, and (slow) its quick-profile metrics match tests/baselines/."""
from __future__ import annotations

import warnings
from pathlib import Path

import nbformat
import pytest

from metalib.runner import (NotebookFormatError, baseline_path, compare_metrics, discover_notebooks,
                            find_parameters_cell, find_project, load_baseline, parse_parameters, run_notebook)

PROJECT = find_project(Path(__file__).parent)  # this checkout, whatever the working directory
BASELINES_DIR = PROJECT.baselines_dir
NOTEBOOKS = discover_notebooks(PROJECT.notebooks_dir)
IDS = [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_clean(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    first = nb.cells[0] if nb.cells else None
    assert first is not None and first.cell_type == "markdown" and first.source.lstrip().startswith("# "), \
        f"{path.name}: the first cell must be a markdown title ('# Title')"
    dirty = [i for i, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; clear them before "
                       f"committing (Edit > Clear Outputs of All Cells, or `jupyter nbconvert "
                       f"--clear-output --inplace {path}`)")
    injected = [i for i, cell in enumerate(nb.cells) if "injected-parameters" in cell.metadata.get("tags", [])]
    assert not injected, f"{path.name}: cells {injected} are papermill-injected parameters; remove them"
    try:
        index = find_parameters_cell(nb, path.name)
        parse_parameters(nb.cells[index].source, f"{path.name}, parameters cell {index}")
    except NotebookFormatError as exc:
        pytest.fail(str(exc))


def test_every_baseline_has_a_notebook():
    stems = {p.stem for p in NOTEBOOKS}
    orphans = sorted(p.name for p in BASELINES_DIR.glob("*.json") if p.stem not in stems)
    assert not orphans, f"baselines without a notebook in notebooks/ (renamed or removed?): {orphans}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_matches_baseline(path: Path):
    baseline_file = baseline_path(path, BASELINES_DIR)
    if not baseline_file.exists():
        pytest.fail(f"no baseline {baseline_file.relative_to(BASELINES_DIR.parents[1])} for {path.name}: create "
                    f"it with `make baselines` (or `python -m metalib.runner run --profile quick "
                    f"--update-baselines --only {path.stem}`) and commit it")
    result = run_notebook(path, PROJECT.output_root / "test", profile="quick")
    if not result.ok:
        pytest.fail(f"{path.name} {result.status}: {result.error}\nexecuted notebook: {result.output_path}\n"
                    f"{result.traceback}", pytrace=False)
    comparison = compare_metrics(result.metrics, load_baseline(baseline_file))
    if comparison.new:
        warnings.warn(f"{path.name}: metrics not in the baseline (run `make baselines` to add them): "
                      f"{', '.join(comparison.new)}", stacklevel=1)
    assert comparison.ok, (f"{path.name}: metrics differ from {baseline_file.name} "
                           f"(runtime {result.runtime_s:.0f} s):\n  " + "\n  ".join(comparison.failures))

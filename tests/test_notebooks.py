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


# What a notebook's text says of its own figures, checked on the metrics its quick run records: a change that turns
# one of these around makes the text wrong, so the test fails and the text is mended with it.
CLAIMS = {
    "07_beyond_maml": [
        ("imaml_inner_residual", ">", 0.01, "section 4: iMAML's inner problem is far from solved at imaml_steps"),
    ],
    "08_learning_the_optimiser_and_architecture": [
        ("learned_vs_tuned_adam_longer", ">", 2.0, "the learned rule ends far above tuned Adam on 4x longer runs"),
        ("learned_vs_tuned_adam_wider", ">", 2.0, "... and on the 4x wider net"),
        ("learned_vs_tuned_adam_deeper", "<", 2.0, "... near or below it on a deeper net"),
        ("learned_vs_tuned_adam_minibatch", "<", 2.0, "... and with noisy minibatch gradients"),
        ("sgd_diverged_on_wider_net", "==", 1, "SGD at its tuned rate diverges on the wider net"),
    ],
}
_OPS = {">": lambda a, b: a > b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b}


def check_claims(stem: str, metrics: dict) -> list[str]:
    """The claims of notebook ``stem`` that its recorded metrics contradict (or do not record)."""
    wrong = []
    for name, op, bound, claim in CLAIMS.get(stem, []):
        value = metrics.get(name, {}).get("value")
        if value is None or not _OPS[op](value, bound):
            wrong.append(f"{claim}: needs {name} {op} {bound}, recorded {value}")
    return wrong


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
    wrong = check_claims(path.stem, result.metrics)
    assert not wrong, f"{path.name}: its text says what its figures no longer show:\n  " + "\n  ".join(wrong)


def test_claims_name_notebooks_that_exist_and_can_fail():
    assert set(CLAIMS) <= set(IDS)
    assert check_claims("08_learning_the_optimiser_and_architecture", {}), "a missing metric must fail the claim"
    assert check_claims("07_beyond_maml", {"imaml_inner_residual": {"value": 0.001}})

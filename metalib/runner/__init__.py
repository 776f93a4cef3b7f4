"""Run the notebook collection with papermill and check its metrics against baselines.

``python -m metalib.runner run`` executes the notebooks of the project (``make run``, ``make baselines``);
``python -m metalib.runner list`` lists them. One idea per module:

* :mod:`~metalib.runner.cli`: the command line (options, defaults, exit codes).
* :mod:`~metalib.runner.project`: the project folder (``notebooks/``, ``output/``, ``tests/baselines/``),
  found from the working directory.
* :mod:`~metalib.runner.params`: the ``parameters`` cell, its ``# full:`` comments and the two profiles.
* :mod:`~metalib.runner.discover`: the notebooks of a folder and ``--only`` selections.
* :mod:`~metalib.runner.kernels`: the Jupyter kernel, with a fallback to the current interpreter.
* :mod:`~metalib.runner.notebooks`: running notebooks (timeouts, failing cells, metrics) and the summary.
* :mod:`~metalib.runner.baselines`: baseline files, tolerances and the comparison.
* :mod:`~metalib.runner.book`: the executed notebooks as an HTML book (``python -m metalib.runner book``);
  imported on use, as it needs the ``book`` extra.

Notebooks record their metrics with :func:`metalib.metrics.record_metric`.
"""
from .baselines import (MetricComparison, baseline_path, compare_metrics, default_tolerance, load_baseline,
                        make_baseline, write_baseline)
from .cli import main
from .discover import discover_notebooks, select_notebooks
from .notebooks import NotebookResult, run_notebook, run_notebooks, summary_table
from .kernels import KernelChoice, resolve_kernel
from .params import (NotebookFormatError, Parameter, find_parameters_cell, notebook_parameters, parse_cli_value,
                     parse_parameters, profile_parameters)
from .project import Project, ProjectNotFoundError, find_project

__all__ = ["NotebookFormatError", "Parameter", "parse_parameters", "find_parameters_cell", "notebook_parameters",
           "profile_parameters", "parse_cli_value", "discover_notebooks", "select_notebooks", "Project",
           "ProjectNotFoundError", "find_project", "KernelChoice", "resolve_kernel", "NotebookResult",
           "run_notebook", "run_notebooks", "summary_table", "default_tolerance", "make_baseline",
           "write_baseline", "load_baseline", "baseline_path", "compare_metrics", "MetricComparison", "main"]

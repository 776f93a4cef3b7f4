"""Run the notebook collection with papermill, and record metrics from inside notebooks.

Command line
------------
::

    python -m metalib.notebooks run [--profile {quick,full}] [--only SEL [SEL ...]] [-p NAME VALUE]...
                                    [--timeout SECONDS] [--kernel NAME] [--jobs N] [--output-dir DIR]
                                    [--update-baselines]
    python -m metalib.notebooks list

``run`` executes every ``notebooks/NN_name.ipynb`` (sorted by name) or a selection (``--only 02 maml``:
a number selects by the ``NN`` prefix, anything else by name substring) into ``output/<profile>/``
(git-ignored), each in its own kernel, optionally ``--jobs N`` at a time. It prints a summary table
(notebook, status, runtime, metrics) and exits 1 if any notebook failed, naming the failing cell.
``--timeout`` bounds each notebook's whole wall clock (default 1800 s for ``quick``, none for ``full``;
0 means none). ``--kernel`` defaults to the ``metalib`` kernel (``make venv`` installs it); a kernel that
is not installed falls back to the interpreter running this command. ``make run`` and ``make baselines``
call this command. ``list`` shows the notebooks with their parameters and whether a baseline exists.

Profiles and the parameters cell
--------------------------------
Every notebook has exactly one code cell tagged ``parameters``. Its assignments are the *quick* profile
(CI and a first look, a few minutes on a laptop). The *full*, paper-scale value of a parameter is written
next to it as a trailing comment::

    n_iterations = 300  # full: 60000  (paper: 60k meta-iterations)
    ways = (5, 20)      # full: (5, 20, 50)
    device = "auto"

After ``full:`` comes a Python literal; the longest prefix (cut at whitespace) that ``ast.literal_eval``
accepts is the value, and any further text is free (keep it apart by two spaces or in parentheses, and do
not start it with a comma, which would make a tuple). ``--profile full`` passes every such value to
papermill as a parameter; parameters without a ``full:`` comment keep their quick value. ``-p NAME VALUE``
overrides either profile (VALUE is read with ``ast.literal_eval``, else taken as a string) for the
selected notebooks that declare NAME.

Metrics
-------
A notebook reports its results with :func:`record_metric`::

    from metalib.notebooks import record_metric
    record_metric("test_accuracy", result)                  # an EvalResult: its mean, with ci95 and n_tasks
    record_metric("final_loss", history["loss"].iloc[-1], tolerance=0.02)
    record_metric("n_params", sum(p.numel() for p in model.parameters()))

Under the runner, ``METALIB_METRICS_PATH`` points each kernel to ``<output dir>/<stem>.metrics.json`` next
to the executed notebook, and the metrics are appended there (insertion order; recording a name again
replaces it). Without that variable (interactive use) they are only printed.

Baselines
---------
``tests/test_notebooks.py`` runs every notebook in the quick profile and compares its metrics with
``tests/baselines/<stem>.json``::

    {"notebook": "02_maml.ipynb", "profile": "quick",
     "metrics": {"test_accuracy": {"value": 0.93, "tolerance": 0.024, "basis": "3 x ci95"}}}

Tolerances are absolute. ``run --update-baselines`` (``make baselines``) rewrites the baselines of the
notebooks it ran, choosing each tolerance as: the ``tolerance`` passed to :func:`record_metric`; else
3 x its ``ci95`` (the half-width of the 95% confidence interval, the noise of an accuracy); else 5% of the
value. Strings and booleans must match exactly.

Interactive use
---------------
``make lab`` opens ``notebooks/`` in JupyterLab with the ``metalib`` kernel. The parameters cell then runs
with its quick values; edit them in place (without committing the outputs) or use ``run -p``.
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import math
import os
import re
import sys
import threading
import time
import tokenize
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

if TYPE_CHECKING:
    import pandas as pd
    from nbformat import NotebookNode

__all__ = ["record_metric", "record_metrics", "load_metrics", "NotebookFormatError", "Parameter",
           "parse_parameters", "find_parameters_cell", "notebook_parameters", "profile_parameters",
           "discover_notebooks", "select_notebooks", "KernelChoice", "resolve_kernel", "NotebookResult",
           "run_notebook", "run_notebooks", "summary_table", "default_tolerance", "make_baseline",
           "write_baseline", "load_baseline", "baseline_path", "compare_metrics", "MetricComparison", "main"]

METRICS_ENV = "METALIB_METRICS_PATH"
REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
OUTPUT_ROOT = REPO_ROOT / "output"
BASELINES_DIR = REPO_ROOT / "tests" / "baselines"
PROFILES = ("quick", "full")
DEFAULT_TIMEOUT_S: dict[str, float | None] = {"quick": 1800.0, "full": None}
DEFAULT_KERNEL = "metalib"
KERNEL_START_TIMEOUT_S = 120
DEFAULT_REL_TOLERANCE = 0.05
CI_TOLERANCE_FACTOR = 3.0
_MIN_TOLERANCE = 1e-9


# ----------------------------------------------------------------------------------------------------
# Metrics recorder (used inside notebooks)
# ----------------------------------------------------------------------------------------------------

def _plain(value: Any, what: str) -> Any:
    """``value`` as a JSON scalar; NumPy/torch scalars are unwrapped with ``.item()``."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, RuntimeError) as exc:  # a tensor/array with more than one element
            raise TypeError(f"{what} must be a scalar, got {type(value).__name__} with several elements") from exc
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{what} must be a float, int or str, got {type(value).__name__}")


def _metric_entry(name: str, value: Any, tolerance: float | None, info: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"metric name must be a non-empty string, got {name!r}")
    info = dict(info)
    if hasattr(value, "mean") and hasattr(value, "ci95") and not hasattr(value, "item"):
        # An EvalResult: record its mean and keep the noise needed for the tolerance.
        info.setdefault("ci95", value.ci95)
        if getattr(value, "n_tasks", None) is not None:
            info.setdefault("n_tasks", value.n_tasks)
        value = value.mean
    value = _plain(value, f"metric {name!r}")
    if value is None:
        raise TypeError(f"metric {name!r} must be a float, int or str, got None")
    entry: dict[str, Any] = {"value": value}
    if tolerance is not None:
        tol = _plain(tolerance, f"tolerance of metric {name!r}")
        if isinstance(tol, (str, bool)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"tolerance of metric {name!r} must be a finite number >= 0, got {tolerance!r}")
        entry["tolerance"] = float(tol)
    for key, extra in info.items():
        entry[key] = _plain(extra, f"info {key!r} of metric {name!r}")
    return entry


def _format_value(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_metrics(path: str | Path) -> dict[str, dict[str, Any]]:
    """Metrics recorded in ``path`` as ``{name: {"value": ..., "tolerance"?: ..., **info}}``; {} if absent."""
    path = Path(path)
    if not path.exists():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics")
    return data


def record_metrics(metrics: Mapping[str, Any], *, tolerance: float | None = None) -> None:
    """Record several metrics at once (same ``tolerance`` for all); see :func:`record_metric`."""
    entries = {name: _metric_entry(name, value, tolerance, {}) for name, value in metrics.items()}
    _store(entries)


def record_metric(name: str, value: Any, *, tolerance: float | None = None, **info: Any) -> None:
    """Record one metric of this notebook run.

    ``value`` is a float, int or str (NumPy/torch scalars are unwrapped), or an ``EvalResult`` (its mean is
    recorded, with ``ci95`` and ``n_tasks``). ``tolerance`` is the absolute deviation the regression test
    allows; ``info`` holds further JSON scalars (``ci95=`` is used for the default tolerance). Under the
    runner the metric is written to ``$METALIB_METRICS_PATH``; interactively it is only printed.
    """
    _store({name: _metric_entry(name, value, tolerance, info)})


def _store(entries: dict[str, dict[str, Any]]) -> None:
    target = os.environ.get(METRICS_ENV)
    if target:
        path = Path(target)
        metrics = load_metrics(path)
        metrics.update(entries)
        _write_json(path, metrics)
    for name, entry in entries.items():
        extras = "".join(f", {k}={_format_value(v)}" for k, v in entry.items() if k != "value")
        print(f"metric {name} = {_format_value(entry['value'])}{' (' + extras[2:] + ')' if extras else ''}")


# ----------------------------------------------------------------------------------------------------
# The parameters cell and profiles
# ----------------------------------------------------------------------------------------------------

class NotebookFormatError(ValueError):
    """A notebook breaks the collection's conventions (parameters cell, full-profile comments)."""


_NO_VALUE = object()
_FULL_COMMENT = re.compile(r"#\s*full\s*:(?P<rest>.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Parameter:
    """One assignment of a parameters cell: its quick source text and its full-profile value, if any."""

    name: str
    quick: str
    full: Any = _NO_VALUE

    @property
    def has_full(self) -> bool:
        return self.full is not _NO_VALUE


def _leading_literal(text: str) -> Any:
    """The longest whitespace-delimited prefix of ``text`` that is a Python literal."""
    text = text.strip()
    cuts = [i for i in range(1, len(text)) if text[i].isspace() and not text[i - 1].isspace()] + [len(text)]
    for cut in reversed(cuts):
        try:
            return ast.literal_eval(text[:cut])
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    raise ValueError(text)


def parse_parameters(source: str, where: str = "parameters cell") -> dict[str, Parameter]:
    """The ``name = value  # full: value`` assignments of a parameters cell, in order."""
    try:
        tree = ast.parse(source)
        comments = {tok.start[0]: tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                    if tok.type == tokenize.COMMENT}
    except (SyntaxError, tokenize.TokenError) as exc:
        raise NotebookFormatError(f"{where}: not valid Python ({exc})") from exc
    full_lines = {line: m["rest"] for line, text in comments.items() if (m := _FULL_COMMENT.match(text))}
    params: dict[str, Parameter] = {}
    used: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name = node.target.id
        else:
            continue
        full: Any = _NO_VALUE
        for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
            if line in full_lines:
                used.add(line)
                try:
                    full = _leading_literal(full_lines[line])
                except ValueError:
                    raise NotebookFormatError(
                        f"{where}, line {line}: cannot read the full-profile value of {name!r} from "
                        f"'# full:{full_lines[line]}'; it must start with a Python literal") from None
        params[name] = Parameter(name, ast.get_source_segment(source, node.value) or "", full)
    stray = sorted(set(full_lines) - used)
    if stray:
        raise NotebookFormatError(f"{where}, line {stray[0]}: a '# full:' comment must trail a simple "
                                  f"`name = value` assignment")
    return params


def _read_notebook(path: Path) -> NotebookNode:
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except Exception as exc:  # nbformat raises several unrelated types for unreadable files
        raise NotebookFormatError(f"{path}: cannot read notebook ({type(exc).__name__}: {exc})") from exc


def find_parameters_cell(nb: NotebookNode, where: str | Path = "notebook") -> int:
    """Index of the single code cell tagged ``parameters``; a clear error if there is none or several."""
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if not tagged:
        raise NotebookFormatError(f"{where}: no cell is tagged 'parameters'; tag the cell holding the quick-"
                                  f"profile values (View > Cell toolbar > Tags in Jupyter)")
    if len(tagged) > 1:
        raise NotebookFormatError(f"{where}: {len(tagged)} cells are tagged 'parameters' (cells {tagged}); "
                                  f"exactly one is allowed")
    if nb.cells[tagged[0]].cell_type != "code":
        raise NotebookFormatError(f"{where}: the cell tagged 'parameters' (cell {tagged[0]}) is not a code cell")
    return tagged[0]


def notebook_parameters(path: str | Path) -> dict[str, Parameter]:
    """The parameters declared in the notebook's ``parameters`` cell."""
    path = Path(path)
    nb = _read_notebook(path)
    index = find_parameters_cell(nb, path)
    return parse_parameters(nb.cells[index].source, f"{path}, parameters cell {index}")


def profile_parameters(params: Mapping[str, Parameter] | str | Path, profile: str) -> dict[str, Any]:
    """Papermill parameters for ``profile``: {} for quick, the ``# full:`` values for full."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    if not isinstance(params, Mapping):
        params = notebook_parameters(params)
    if profile == "quick":
        return {}
    return {name: p.full for name, p in params.items() if p.has_full}


def parse_cli_value(text: str) -> Any:
    """A ``-p`` value: a Python literal if it parses as one, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


# ----------------------------------------------------------------------------------------------------
# Discovery and selection
# ----------------------------------------------------------------------------------------------------

def discover_notebooks(directory: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """The ``*.ipynb`` files of ``directory``, sorted by name (``NN_name.ipynb`` in the collection)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.ipynb") if p.is_file() and not p.name.startswith("."))


def _number_prefix(stem: str) -> int | None:
    m = re.match(r"(\d+)", stem)
    return int(m.group(1)) if m else None


def select_notebooks(paths: Sequence[Path], only: Iterable[str] | None) -> list[Path]:
    """Notebooks matching any selector of ``only`` (a number: by prefix; else a name substring)."""
    selectors = list(only or [])
    if not selectors:
        return list(paths)
    chosen: set[Path] = set()
    for sel in selectors:
        if sel.isdigit():
            hits = [p for p in paths if _number_prefix(p.stem) == int(sel)]
        else:
            hits = [p for p in paths if sel.lower().removesuffix(".ipynb") in p.stem.lower()]
        if not hits:
            raise LookupError(f"--only {sel!r} matches no notebook (have: {', '.join(p.stem for p in paths)})")
        chosen.update(hits)
    return [p for p in paths if p in chosen]


# ----------------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KernelChoice:
    """The kernel to run notebooks with; ``current_interpreter`` means ``sys.executable`` + ipykernel."""

    name: str
    current_interpreter: bool = False
    note: str | None = None


def _kernel_problem(name: str) -> str | None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        return "is not installed"
    exe = spec.argv[0] if spec.argv else ""
    if os.path.isabs(exe) and not os.path.exists(exe):
        return f"points to a missing interpreter ({exe})"
    return None


def resolve_kernel(requested: str | None = None) -> KernelChoice:
    """``requested`` (default ``metalib``) if usable, else the interpreter running this process."""
    wanted = requested or DEFAULT_KERNEL
    problem = _kernel_problem(wanted)
    if problem is None:
        return KernelChoice(wanted)
    note = f"kernel {wanted!r} {problem}; using the current interpreter ({sys.executable})"
    if wanted == DEFAULT_KERNEL:
        note += (f". `make venv` installs it, or: {sys.executable} -m ipykernel install --sys-prefix "
                 f"--name metalib --display-name 'Python (metalib)'")
    return KernelChoice("python3", current_interpreter=True, note=note)


def _current_interpreter_spec() -> Any:
    from ipykernel.kernelspec import RESOURCES, get_kernel_dict
    from jupyter_client.kernelspec import KernelSpec

    spec = get_kernel_dict()
    known = {"argv", "display_name", "language", "metadata", "env", "interrupt_mode"}
    return KernelSpec(resource_dir=RESOURCES, **{k: v for k, v in spec.items() if k in known})


def _kernel_manager_class(env: dict[str, str], cwd: Path, current_interpreter: bool,
                          kill_now: Callable[[], bool] = lambda: False) -> type:
    """A kernel manager that starts the kernel with ``env`` in ``cwd`` and kills it when ``kill_now()``.

    Passing the environment per kernel (instead of mutating ``os.environ``) keeps parallel runs in
    threads apart; papermill's own ``cwd`` option would ``chdir`` the whole process.
    """
    import zmq
    from jupyter_client import AsyncKernelManager

    class RunnerKernelManager(AsyncKernelManager):
        @property
        def kernel_spec(self) -> Any:
            if current_interpreter:
                return _current_interpreter_spec()
            return super().kernel_spec

        async def start_kernel(self, **kw: Any) -> None:
            kw["env"] = {**(kw.get("env") or os.environ), **env}
            kw.setdefault("cwd", str(cwd))
            if zmq.has("curve"):
                # Encrypt the local kernel connection where the kernel supports it (no ipykernel warning).
                kw.setdefault("transport_encryption", "auto")
            await super().start_kernel(**kw)

        async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
            # A kernel still busy after a timeout cannot shut down gracefully.
            await super().shutdown_kernel(now=now or kill_now(), restart=restart)

    return RunnerKernelManager


def _python_literal_translator() -> type:
    """Papermill's Python translator turns tuples and sets into strings; write them as literals instead."""
    from papermill.translators import PythonTranslator

    class LiteralTranslator(PythonTranslator):
        @classmethod
        def translate(cls, val: Any) -> str:
            if isinstance(val, (tuple, set, frozenset, complex, bytes)):
                return repr(val)
            return super().translate(val)

    return LiteralTranslator


# ----------------------------------------------------------------------------------------------------
# Execution
# ----------------------------------------------------------------------------------------------------

@dataclass
class NotebookResult:
    """Outcome of one notebook run; ``status`` is ok, failed (a cell raised), timeout or error."""

    notebook: str
    path: Path
    output_path: Path
    metrics_path: Path
    status: str = "not run"
    runtime_s: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    traceback: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _WallClockExceeded(TimeoutError):
    pass


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _kernel_env(metrics_path: Path) -> dict[str, str]:
    env = {METRICS_ENV: str(metrics_path), "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    # The kernel imports the same metalib as this runner, whatever its working directory.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                     os.environ.get("PYTHONPATH")]))
    data_dir = os.environ.get("METALIB_DATA_DIR")
    if data_dir and not Path(data_dir).expanduser().is_absolute():
        env["METALIB_DATA_DIR"] = str(Path(data_dir).expanduser().resolve())
    return env


def _describe_cell(cell_index: int | None, params_index: int, injected: bool) -> str:
    """Name a cell of the executed notebook by its index in the source notebook."""
    if cell_index is None:
        return "an unknown cell"
    if injected and cell_index == params_index + 1:
        return "the injected-parameters cell"
    source_index = cell_index - 1 if injected and cell_index > params_index + 1 else cell_index
    return f"cell {source_index}"


def run_notebook(path: str | Path, output_dir: str | Path, *, profile: str = "quick",
                 overrides: Mapping[str, Any] | None = None, timeout: float | None = None,
                 kernel: KernelChoice | None = None, progress_bar: bool = False) -> NotebookResult:
    """Execute one notebook with papermill into ``output_dir``; never raises for notebook failures.

    ``timeout`` (seconds, None for none) bounds the whole run, kernel start included. The executed
    notebook is ``output_dir/<name>.ipynb`` and its metrics ``output_dir/<stem>.metrics.json``.
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError
    from papermill.translators import papermill_translators

    path = Path(path).resolve()
    output_dir = Path(output_dir).resolve()
    result = NotebookResult(path.stem, path, output_dir / path.name, output_dir / f"{path.stem}.metrics.json")
    start = time.monotonic()
    try:
        nb = _read_notebook(path)
        params_index = find_parameters_cell(nb, path)
        declared = parse_parameters(nb.cells[params_index].source, f"{path}, parameters cell {params_index}")
        result.parameters = {**profile_parameters(declared, profile), **(overrides or {})}
    except NotebookFormatError as exc:
        result.status, result.error = "error", str(exc)
        return result

    kernel = kernel or resolve_kernel()
    output_dir.mkdir(parents=True, exist_ok=True)
    result.metrics_path.unlink(missing_ok=True)
    papermill_translators.register(kernel.name, _python_literal_translator())
    deadline = None if not timeout else start + timeout
    current = {"cell": None}

    def on_cell_start(cell: Any, cell_index: int) -> None:
        current["cell"] = cell_index
        if deadline is not None and time.monotonic() >= deadline:
            raise _WallClockExceeded()

    engine_kwargs: dict[str, Any] = {
        "kernel_manager_class": _kernel_manager_class(
            _kernel_env(result.metrics_path), path.parent, kernel.current_interpreter,
            kill_now=lambda: deadline is not None and time.monotonic() >= deadline),
        "on_cell_start": on_cell_start,
    }
    if deadline is not None:
        engine_kwargs["execution_timeout"] = int(math.ceil(timeout))
        # nbclient asks for each cell's timeout when the cell starts: give it what is left of the budget.
        engine_kwargs["timeout_func"] = lambda cell: max(1, int(math.ceil(deadline - time.monotonic())))

    injected = bool(result.parameters)
    try:
        papermill.execute_notebook(
            str(path), str(result.output_path), parameters=dict(result.parameters), kernel_name=kernel.name,
            language="python", progress_bar=progress_bar, start_timeout=KERNEL_START_TIMEOUT_S, **engine_kwargs)
        result.status = "ok"
    except PapermillExecutionError as exc:
        where = _describe_cell(exc.cell_index, params_index, injected)
        first_line = next((line for line in (exc.source or "").splitlines() if line.strip()), "")
        result.status = "failed"
        result.error = f"{where} (In [{exc.exec_count}]) raised {exc.ename}: {exc.evalue}"
        if first_line:
            result.error += f"\n    first line of the cell: {first_line.strip()}"
        result.traceback = _ANSI.sub("", "\n".join(exc.traceback or []))
    except (CellTimeoutError, _WallClockExceeded):
        result.status = "timeout"
        result.error = (f"exceeded the {timeout:g} s timeout in "
                        f"{_describe_cell(current['cell'], params_index, injected)}")
    except DeadKernelError as exc:
        result.status = "error"
        result.error = (f"the kernel died in {_describe_cell(current['cell'], params_index, injected)} "
                        f"(out of memory?): {exc}")
    except Exception as exc:  # kernel start failures, I/O errors...: report, keep the other notebooks going
        result.status = "error"
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.runtime_s = time.monotonic() - start
        try:
            result.metrics = load_metrics(result.metrics_path)
        except (OSError, ValueError) as exc:
            result.metrics = {}
            if result.ok:
                result.status, result.error = "error", f"unreadable metrics file {result.metrics_path}: {exc}"
    return result


def run_notebooks(paths: Sequence[Path], output_dir: str | Path, *, profile: str = "quick",
                  overrides: Mapping[str, Any] | None = None, timeout: float | None = None,
                  kernel: KernelChoice | None = None, jobs: int = 1, log: Any = print) -> list[NotebookResult]:
    """Run ``paths`` (``jobs`` at a time, each in its own kernel); results in the order of ``paths``.

    ``overrides`` go only to the notebooks whose parameters cell declares them.
    """
    kernel = kernel or resolve_kernel()
    overrides = dict(overrides or {})
    declared: dict[Path, set[str]] = {}
    for p in paths:
        try:
            declared[p] = set(notebook_parameters(p))
        except NotebookFormatError:
            declared[p] = set()  # run_notebook reports the error
    total = len(paths)
    done = 0
    lock = threading.Lock()

    def one(p: Path) -> NotebookResult:
        nonlocal done
        own = {k: v for k, v in overrides.items() if k in declared[p]}
        log(f"-> {p.stem}")
        res = run_notebook(p, output_dir, profile=profile, overrides=own, timeout=timeout, kernel=kernel,
                           progress_bar=jobs == 1 and sys.stderr.isatty())
        with lock:
            done += 1
            log(f"[{done}/{total}] {res.notebook}: {res.status} ({res.runtime_s:.1f} s)")
        return res

    if jobs <= 1 or total <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(one, p): p for p in paths}
        by_path = {futures[f]: f.result() for f in as_completed(futures)}
    return [by_path[p] for p in paths]


def _metrics_text(metrics: Mapping[str, Mapping[str, Any]], limit: int = 100) -> str:
    text = ", ".join(f"{name}={_format_value(m.get('value'))}" for name, m in metrics.items())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def summary_table(results: Sequence[NotebookResult]) -> pd.DataFrame:
    """One row per notebook: notebook, status, runtime_s, metrics."""
    import pandas as pd

    return pd.DataFrame({
        "notebook": [r.notebook for r in results],
        "status": [r.status for r in results],
        "runtime_s": [round(r.runtime_s, 1) for r in results],
        "metrics": [_metrics_text(r.metrics) for r in results],
    })


# ----------------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------------

def baseline_path(notebook: str | Path, baselines_dir: str | Path = BASELINES_DIR) -> Path:
    """``<baselines_dir>/<stem>.json`` for a notebook path or stem."""
    return Path(baselines_dir) / f"{Path(notebook).stem}.json"


def default_tolerance(entry: Mapping[str, Any]) -> tuple[float | None, str]:
    """Absolute tolerance for a recorded metric, and how it was chosen (None: exact match)."""
    value = entry["value"]
    if isinstance(value, (str, bool)):
        return None, "exact"
    if entry.get("tolerance") is not None:
        return float(entry["tolerance"]), "recorded by the notebook"
    ci95 = entry.get("ci95")
    if isinstance(ci95, (int, float)) and not isinstance(ci95, bool) and math.isfinite(ci95) and ci95 > 0:
        return CI_TOLERANCE_FACTOR * float(ci95), f"{CI_TOLERANCE_FACTOR:g} x ci95"
    tol = DEFAULT_REL_TOLERANCE * abs(value) if math.isfinite(value) else 0.0
    return max(tol, _MIN_TOLERANCE), f"{DEFAULT_REL_TOLERANCE:.0%} relative"


def make_baseline(notebook: str, metrics: Mapping[str, Mapping[str, Any]], profile: str = "quick") -> dict:
    """The baseline document for a run's metrics."""
    entries = {}
    for name, entry in metrics.items():
        tol, basis = default_tolerance(entry)
        entries[name] = {"value": entry["value"], "tolerance": tol, "basis": basis}
    return {"notebook": notebook, "profile": profile,
            "note": "absolute tolerances; regenerate with `make baselines`", "metrics": entries}


def write_baseline(result: NotebookResult, baselines_dir: str | Path = BASELINES_DIR,
                   profile: str = "quick") -> Path:
    """Write the baseline of a successful run; returns its path."""
    if not result.ok:
        raise ValueError(f"{result.notebook} did not run successfully ({result.status}); no baseline written")
    path = baseline_path(result.notebook, baselines_dir)
    _write_json(path, make_baseline(result.path.name, result.metrics, profile))
    return path


def load_baseline(path: str | Path) -> dict:
    """A baseline document, checked for the ``metrics`` mapping."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ValueError(f"{path}: not a baseline (expected an object with a 'metrics' mapping)")
    return data


@dataclass
class MetricComparison:
    """Failures (out of tolerance or missing), metrics new to the baseline, and those that passed."""

    failures: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def compare_metrics(metrics: Mapping[str, Mapping[str, Any]], baseline: Mapping[str, Any]) -> MetricComparison:
    """Compare a run's metrics with a baseline document (absolute tolerances; None means exact)."""
    out = MetricComparison()
    expected: Mapping[str, Mapping[str, Any]] = baseline["metrics"]
    for name, spec in expected.items():
        want, tol = spec["value"], spec.get("tolerance")
        if name not in metrics:
            out.failures.append(f"{name}: missing from the run (baseline {_format_value(want)})")
            continue
        got = metrics[name]["value"]
        if tol is not None and _is_number(got) and _is_number(want):
            good = math.isfinite(got) and abs(got - want) <= tol * (1 + 1e-9) + 1e-12
            detail = f"{_format_value(got)} vs baseline {_format_value(want)} +/- {_format_value(tol)}"
        else:
            good = type(got) is type(want) and got == want
            detail = f"{got!r} vs baseline {want!r} (exact)"
        (out.passed if good else out.failures).append(f"{name}: {detail}")
    out.new = [name for name in metrics if name not in expected]
    return out


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------

def _rel(path: Path) -> str:
    """``path`` relative to the working directory when inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m metalib.notebooks",
                                     description="Run the metalib notebooks with papermill.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute notebooks into output/<profile>/ and print a summary")
    run.add_argument("--profile", choices=PROFILES, default="quick",
                     help="quick: the parameters-cell values; full: the '# full:' values (default quick)")
    run.add_argument("--only", nargs="+", metavar="SEL",
                     help="notebooks to run: number prefix (02) or name substring (maml)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override a parameter (VALUE: Python literal, else string); repeatable")
    run.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                     help="wall-clock seconds per notebook (default 1800 for quick, none for full; 0: none)")
    run.add_argument("--kernel", default=None, metavar="NAME",
                     help=f"Jupyter kernel (default {DEFAULT_KERNEL!r}; falls back to this interpreter)")
    run.add_argument("--jobs", type=int, default=1, metavar="N", help="notebooks run in parallel (default 1)")
    run.add_argument("--output-dir", type=Path, default=None, metavar="DIR", help="default output/<profile>/")
    run.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR, metavar="DIR",
                     help="where the notebooks are (default notebooks/)")
    run.add_argument("--baselines-dir", type=Path, default=BASELINES_DIR, metavar="DIR",
                     help="where --update-baselines writes (default tests/baselines/)")
    run.add_argument("--update-baselines", action="store_true",
                     help="rewrite tests/baselines/<stem>.json from this run (quick profile only)")

    lst = sub.add_parser("list", help="list the notebooks, their parameters and baselines")
    lst.add_argument("--notebooks-dir", type=Path, default=NOTEBOOKS_DIR, metavar="DIR")
    lst.add_argument("--baselines-dir", type=Path, default=BASELINES_DIR, metavar="DIR")
    return parser


def _title(path: Path) -> str:
    try:
        nb = _read_notebook(path)
    except NotebookFormatError:
        return "?"
    if nb.cells and nb.cells[0].cell_type == "markdown":
        for line in nb.cells[0].source.splitlines():
            if line.strip():
                return line.lstrip("# ").strip()
    return ""


def _cmd_list(args: argparse.Namespace) -> int:
    import pandas as pd

    paths = discover_notebooks(args.notebooks_dir)
    if not paths:
        print(f"no notebooks in {_rel(args.notebooks_dir)}")
        return 0
    rows = []
    for p in paths:
        try:
            params = ", ".join(f"{n}={q.quick}" + (f" (full: {q.full!r})" if q.has_full else "")
                               for n, q in notebook_parameters(p).items())
        except NotebookFormatError as exc:
            params = f"ERROR: {exc}"
        rows.append({"notebook": p.stem, "title": _title(p), "parameters": params,
                     "baseline": "yes" if baseline_path(p, args.baselines_dir).exists() else "no"})
    print(pd.DataFrame(rows).to_string(index=False, max_colwidth=80))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if args.jobs < 1 or (args.timeout is not None and args.timeout < 0):
        print("error: --jobs must be >= 1 and --timeout >= 0", file=sys.stderr)
        return 2
    if args.update_baselines and (args.profile != "quick" or args.parameter):
        print("error: --update-baselines records the quick profile: drop --profile full and -p",
              file=sys.stderr)
        return 2
    paths = discover_notebooks(args.notebooks_dir)
    if not paths:
        print(f"error: no notebooks (*.ipynb) in {_rel(args.notebooks_dir)}", file=sys.stderr)
        return 2
    try:
        paths = select_notebooks(paths, args.only)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    overrides = {name: parse_cli_value(value) for name, value in args.parameter}
    if overrides:
        declared = {p: set(params) for p in paths if (params := _safe_params(p)) is not None}
        for name in overrides:
            users = [p.stem for p, names in declared.items() if name in names]
            if not users:
                print(f"error: -p {name}: no selected notebook declares {name!r} in its parameters cell",
                      file=sys.stderr)
                return 2
            if len(users) < len(paths):
                print(f"note: -p {name} applies to {', '.join(users)} only")

    timeout = DEFAULT_TIMEOUT_S[args.profile] if args.timeout is None else (args.timeout or None)
    output_dir = (args.output_dir or OUTPUT_ROOT / args.profile).resolve()
    kernel = resolve_kernel(args.kernel)
    if kernel.note:
        print(f"note: {kernel.note}", file=sys.stderr)
    print(f"running {len(paths)} notebook(s), profile {args.profile}, kernel "
          f"{'current interpreter' if kernel.current_interpreter else kernel.name}, "
          f"timeout {f'{timeout:g} s' if timeout else 'none'}, jobs {args.jobs}", flush=True)

    results = run_notebooks(paths, output_dir, profile=args.profile, overrides=overrides, timeout=timeout,
                            kernel=kernel, jobs=args.jobs, log=lambda msg: print(msg, flush=True))

    print()
    print(summary_table(results).to_string(index=False))
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"\n{r.notebook} {r.status.upper()}: {r.error}")
        if r.output_path.exists():
            print(f"    executed notebook: {_rel(r.output_path)}")
    print(f"\nexecuted notebooks and metrics in {_rel(output_dir)}/")

    if args.update_baselines:
        for r in results:
            if r.ok:
                path = write_baseline(r, args.baselines_dir, args.profile)
                warn = "" if r.metrics else "  (warning: the notebook recorded no metrics)"
                print(f"baseline written: {_rel(path)} ({len(r.metrics)} metrics){warn}")
            else:
                print(f"baseline NOT updated for {r.notebook} ({r.status})")
    if failed:
        print(f"\n{len(failed)} of {len(results)} notebook(s) failed: {', '.join(r.notebook for r in failed)}")
        return 1
    return 0


def _safe_params(path: Path) -> dict[str, Parameter] | None:
    try:
        return notebook_parameters(path)
    except NotebookFormatError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 a notebook failed, 2 usage error)."""
    args = _build_parser().parse_args(argv)
    if args.command == "list":
        return _cmd_list(args)
    return _cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())

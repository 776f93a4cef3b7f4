"""Execute notebooks with papermill, each in its own kernel, and summarise the runs."""
from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..metrics import METRICS_ENV, format_value, load_metrics
from ..outputs import sweep_dead_writers
from ..utils import PROGRESS_ENV
from .kernels import KernelChoice, kernel_manager_class, python_literal_translator, resolve_kernel
from .params import (NotebookFormatError, find_parameters_cell, notebook_parameters, parse_parameters,
                     profile_parameters, read_notebook)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["NotebookResult", "run_notebook", "run_notebooks", "summary_table"]

KERNEL_START_TIMEOUT_S = 120
# The folder holding the metalib package: the kernels import the same metalib as this runner.
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


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
    # A batch run has no one watching: progress bars would only be stored in the outputs as noise.
    env = {METRICS_ENV: str(metrics_path), "PYDEVD_DISABLE_FILE_VALIDATION": "1", PROGRESS_ENV: "0"}
    # The kernel imports the same metalib as this runner, whatever its working directory.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))
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


def _mark_stopped_cell(output_path: Path, cell_index: int | None) -> None:
    """Mark cell ``cell_index`` of the executed notebook as failed, as papermill marks a cell that raised.

    Papermill only knows cells that raise: after a timeout it saves every cell as completed, and the
    notebook without an exception. The cells after the stopped one are left pending (never run).
    """
    if cell_index is None or not output_path.exists():
        return
    import nbformat
    from papermill.engines import NotebookExecutionManager as Manager

    nb = nbformat.read(output_path, as_version=4)
    if cell_index >= len(nb.cells):
        return
    for cell in nb.cells[cell_index + 1:]:
        meta = cell.metadata.get("papermill")
        if meta is not None and meta.get("start_time") is None:
            meta["status"] = Manager.PENDING
    nb.cells[cell_index].metadata.setdefault("papermill", {}).update(status=Manager.FAILED, exception=True)
    nb.metadata.setdefault("papermill", {})["exception"] = True
    nbformat.write(nb, output_path)


def execution_record(profile: str, result: NotebookResult) -> dict[str, Any]:
    """What an executed notebook says of its run (``metadata.metalib``): profile, status, date, runtime, machine."""
    import platform

    import torch

    from ..profiling import cpu_name

    machine = f"{cpu_name()}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        machine += f"; {torch.cuda.get_device_name(0)}"
    return {"profile": profile, "status": result.status, "runtime_s": round(result.runtime_s, 1),
            "executed": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine,
            "python": platform.python_version(), "torch": torch.__version__}


def _publish(partial: Path, result: NotebookResult, record: dict[str, Any]) -> None:
    """Put the executed notebook, stamped with ``record``, in place if papermill wrote it whole; else keep the
    previous one and say why."""
    if not partial.exists():
        return
    import nbformat

    try:
        nb = nbformat.read(partial, as_version=4)
        nb.metadata["metalib"] = record
        nbformat.write(nb, partial)
        os.replace(partial, result.output_path)
    except Exception as exc:  # a full disk mid-save: a truncated file must not replace a good one
        partial.unlink(missing_ok=True)
        note = f"the executed notebook {result.output_path} was not written ({type(exc).__name__}: {exc})"
        result.error = f"{result.error}; {note}" if result.error else note
        if result.ok:
            result.status = "error"


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
        nb = read_notebook(path)
        params_index = find_parameters_cell(nb, path)
        declared = parse_parameters(nb.cells[params_index].source, f"{path}, parameters cell {params_index}")
        result.parameters = {**profile_parameters(declared, profile), **(overrides or {})}
    except NotebookFormatError as exc:
        result.status, result.error = "error", str(exc)
        return result

    kernel = kernel or resolve_kernel()
    output_dir.mkdir(parents=True, exist_ok=True)
    result.metrics_path.unlink(missing_ok=True)
    papermill_translators.register(kernel.name, python_literal_translator())
    deadline = None if not timeout else start + timeout
    current = {"cell": None}

    def on_cell_start(cell: Any, cell_index: int) -> None:
        current["cell"] = cell_index
        if deadline is not None and time.monotonic() >= deadline:
            raise _WallClockExceeded()

    engine_kwargs: dict[str, Any] = {
        "kernel_manager_class": kernel_manager_class(
            _kernel_env(result.metrics_path), path.parent, kernel.current_interpreter,
            kill_now=lambda: deadline is not None and time.monotonic() >= deadline),
        "on_cell_start": on_cell_start,
    }
    if deadline is not None:
        engine_kwargs["execution_timeout"] = int(math.ceil(timeout))
        # nbclient asks for each cell's timeout when the cell starts: give it what is left of the budget.
        engine_kwargs["timeout_func"] = lambda cell: max(1, int(math.ceil(deadline - time.monotonic())))

    injected = bool(result.parameters)
    # papermill saves the notebook after every cell: into a partial file, which replaces the output only when whole
    partial = output_dir / f".{path.stem}.partial{os.getpid()}-{threading.get_ident()}.ipynb"
    sweep_dead_writers(output_dir, rf"\.{re.escape(path.stem)}\.partial(\d+)-\d+\.ipynb")  # killed runs' partials
    try:
        papermill.execute_notebook(
            str(path), str(partial), parameters=dict(result.parameters), kernel_name=kernel.name,
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
        try:
            _mark_stopped_cell(partial, current["cell"])
        except Exception as exc:  # the timeout is the news; a notebook we cannot rewrite is a footnote
            result.error += f" (the executed notebook was not marked: {type(exc).__name__}: {exc})"
    except DeadKernelError as exc:
        result.status = "error"
        result.error = (f"the kernel died in {_describe_cell(current['cell'], params_index, injected)} "
                        f"(out of memory?): {exc}")
    except Exception as exc:  # kernel start failures, I/O errors...: report, keep the other notebooks going
        result.status = "error"
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.runtime_s = time.monotonic() - start
        _publish(partial, result, execution_record(profile, result))
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
    text = ", ".join(f"{name}={format_value(m.get('value'))}" for name, m in metrics.items())
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

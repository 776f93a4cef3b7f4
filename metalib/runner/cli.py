"""The command line of the notebook runner.

::

    python -m metalib.runner run [--profile {quick,full}] [--only SEL [SEL ...]] [-p NAME VALUE]...
                                 [--timeout SECONDS] [--kernel NAME] [--jobs N] [--output-dir DIR]
                                 [--notebooks-dir DIR] [--baselines-dir DIR] [--update-baselines]
    python -m metalib.runner list [--notebooks-dir DIR] [--baselines-dir DIR]
    python -m metalib.runner book [--only SEL [SEL ...]] [--profile {auto,quick,full}]

``run`` executes every ``notebooks/NN_name.ipynb`` (sorted by name) or a selection (``--only 02 maml``:
a number selects by the ``NN`` prefix, anything else by name substring) into ``output/<profile>/``
(git-ignored), each in its own kernel, optionally ``--jobs N`` at a time. It prints a summary table
(notebook, status, runtime, metrics) and exits 1 if any notebook failed, naming the failing cell.
``--timeout`` bounds each notebook's whole wall clock (default 1800 s for ``quick``, none for ``full``;
0 means none). ``--kernel`` defaults to the ``metalib`` kernel (``make venv`` installs it); a kernel that
is not installed falls back to the interpreter running this command. ``make run`` and ``make baselines``
call this command. ``list`` shows the notebooks with their parameters and whether a baseline exists.
``book`` (``make book``) renders the executed notebooks as an HTML site in ``output/book/html/``
(:mod:`metalib.runner.book`).

``notebooks/``, ``output/`` and ``tests/baselines/`` are those of the project folder found from the
working directory (see :mod:`metalib.runner.project`); ``--notebooks-dir``, ``--output-dir`` and
``--baselines-dir`` override them, and outside a project the ones a command needs must be given.

Interactive use: ``make lab`` opens ``notebooks/`` in JupyterLab with the ``metalib`` kernel. The
parameters cell then runs with its quick values; edit them in place (without committing the outputs) or
use ``run -p``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import sys
from pathlib import Path
from typing import Sequence

from .baselines import baseline_path, write_baseline
from .discover import discover_notebooks, select_notebooks
from .notebooks import run_notebooks, summary_table
from .kernels import DEFAULT_KERNEL, resolve_kernel
from .params import (PROFILES, NotebookFormatError, Parameter, notebook_parameters, notebook_title, parse_cli_value,
                     read_notebook)
from .project import ProjectNotFoundError, find_project

__all__ = ["main"]

DEFAULT_TIMEOUT_S: dict[str, float | None] = {"quick": 1800.0, "full": None}
_DIR_OPTIONS = {"notebooks_dir": "--notebooks-dir", "output_dir": "--output-dir", "baselines_dir": "--baselines-dir"}


class _UsageError(Exception):
    """A command-line mistake: ``main`` prints it as one line and exits 2."""


def _rel(path: Path) -> str:
    """``path`` relative to the working directory when inside it, else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _fill_dirs(args: argparse.Namespace, *needed: str) -> None:
    """Set the directory options in ``needed`` that were not given to those of the project around the cwd."""
    missing = [name for name in needed if getattr(args, name) is None]
    if not missing:
        return
    try:
        project = find_project()
    except ProjectNotFoundError as exc:
        raise _UsageError(f"{exc}; run from inside the project or pass "
                          f"{' and '.join(_DIR_OPTIONS[name] for name in missing)}") from None
    defaults = {"notebooks_dir": project.notebooks_dir, "baselines_dir": project.baselines_dir,
                "output_dir": project.output_root / getattr(args, "profile", "")}
    for name in missing:
        setattr(args, name, defaults[name])


def _writable_dir(path: Path, option: str) -> Path:
    """``path`` as a folder this process can write (created if missing), checked before any notebook runs."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise _UsageError(f"{option} {_rel(path)}: {_rel(existing)} is a file, not a folder; choose another folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _UsageError(f"{option} {_rel(path)} cannot be written ({exc.strerror or exc}); choose a writable "
                          f"folder") from None
    return path


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m metalib.runner",
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
    run.add_argument("--output-dir", type=Path, default=None, metavar="DIR",
                     help="default output/<profile>/ of the project")
    run.add_argument("--update-baselines", action="store_true",
                     help="rewrite tests/baselines/<stem>.json from this run (quick profile only)")

    book = sub.add_parser("book", help="render the executed notebooks as an HTML book in output/book/html/")
    book.add_argument("--only", nargs="+", metavar="SEL", help="the notebooks to put in the book (default all)")
    book.add_argument("--profile", choices=("auto", *PROFILES), default="auto",
                      help="whose executed copies: auto takes output/full/ where it has one, else output/quick/")

    lst = sub.add_parser("list", help="list the notebooks, their parameters and baselines")
    for command, baselines_help in ((run, "where --update-baselines writes"), (lst, "where the baselines are")):
        command.add_argument("--notebooks-dir", type=Path, default=None, metavar="DIR",
                             help="where the notebooks are (default notebooks/ of the project)")
        command.add_argument("--baselines-dir", type=Path, default=None, metavar="DIR",
                             help=f"{baselines_help} (default tests/baselines/ of the project)")
    return parser


def _title(path: Path) -> str:
    try:
        return notebook_title(read_notebook(path))
    except NotebookFormatError:
        return "?"


def _cmd_list(args: argparse.Namespace) -> int:
    import pandas as pd

    _fill_dirs(args, "notebooks_dir", "baselines_dir")
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
        raise _UsageError("--jobs must be >= 1 and --timeout >= 0")
    if args.update_baselines and (args.profile != "quick" or args.parameter):
        raise _UsageError("--update-baselines records the quick profile: drop --profile full and -p")
    _fill_dirs(args, "notebooks_dir", "output_dir", *(["baselines_dir"] if args.update_baselines else []))
    paths = discover_notebooks(args.notebooks_dir)
    if not paths:
        raise _UsageError(f"no notebooks (*.ipynb) in {_rel(args.notebooks_dir)}")
    try:
        paths = select_notebooks(paths, args.only)
    except LookupError as exc:
        raise _UsageError(str(exc)) from None

    overrides = {name: parse_cli_value(value) for name, value in args.parameter}
    if overrides:
        declared = {p: set(params) for p in paths if (params := _safe_params(p)) is not None}
        for name in overrides:
            users = [p.stem for p, names in declared.items() if name in names]
            if not users:
                raise _UsageError(f"-p {name}: no selected notebook declares {name!r} in its parameters cell")
            if len(users) < len(paths):
                print(f"note: -p {name} applies to {', '.join(users)} only")

    timeout = DEFAULT_TIMEOUT_S[args.profile] if args.timeout is None else (args.timeout or None)
    output_dir = _writable_dir(args.output_dir.resolve(), "--output-dir")
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


def _cmd_book(args: argparse.Namespace) -> int:
    from .book import BOOK_PROFILES, BookError, build_book, check_site, executed_sources

    try:
        project = find_project()
    except ProjectNotFoundError as exc:
        raise _UsageError(f"{exc}; run `make book` from inside the project") from None
    root = project.notebooks_dir.parent
    try:
        paths = select_notebooks(discover_notebooks(project.notebooks_dir), args.only)
    except LookupError as exc:
        raise _UsageError(str(exc)) from None
    profiles = BOOK_PROFILES if args.profile == "auto" else (args.profile,)
    output_dir = _writable_dir(project.output_root / "book", "the book's folder")
    try:
        sources = executed_sources(paths, project.output_root, profiles)
        site = build_book(sources, root / "book", root / "README.md", output_dir)
    except BookError as exc:
        raise _UsageError(str(exc)) from None
    broken = check_site(site)
    for line in broken:
        print(f"broken link: {line}", file=sys.stderr)
    print(f"open {_rel(site / 'index.html')} in a browser")
    return 1 if broken else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 a notebook failed, 2 usage error)."""
    args = _build_parser().parse_args(argv)
    commands = {"list": _cmd_list, "run": _cmd_run, "book": _cmd_book}
    try:
        return commands[args.command](args)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

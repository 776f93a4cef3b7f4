"""The book: a static HTML site of the executed notebooks, with a landing page and the API reference.

``python -m metalib.runner book`` (``make book``) takes each notebook as ``make run`` executed it (the full
profile's copy in ``output/full/`` where there is one, else the quick profile's in ``output/quick/``), puts a
box on its page saying the profile, machine and date it ran on and linking the notebook to run, and renders them
with Sphinx and MyST-NB (``book/conf.py``) into ``output/book/html/``. The landing page holds the map of the
notebooks and the model zoo's table, read from the manifests (:func:`metalib.pretrained.results`).

An executed notebook is used only if it ran to the end and is still the notebook in ``notebooks/`` (the same
cells): a failed, stale or missing one stops the build before Sphinx starts, naming the ``make run`` that
mends it. The book never executes anything, and it loads nothing from the network (MathJax is copied in).
"""
from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import unquote, urlsplit

from .params import notebook_title

__all__ = ["BookError", "BookSource", "executed_sources", "build_book", "check_site", "zoo_rows",
           "BOOK_PROFILES", "LONG_OUTPUT_LINES"]

BOOK_PROFILES = ("full", "quick")  # the order in which executed copies are preferred
LONG_OUTPUT_LINES = 40  # a cell whose text outputs run longer is collapsed (figures are never hidden)
_OURS = ".metalib-book"  # the marker of a folder this module wrote (and so may clear)
_INJECTED = "injected-parameters"
_PROFILE_NOTE = {
    "quick": "The quick profile's budgets are short: its figures show each method at work, not converged "
             "results; where the text quotes a converged figure, it comes from the model zoo.",
    "full": "The full profile runs the paper-scale settings written beside each parameter.",
}


class BookError(Exception):
    """The book cannot be built as asked; the message is one line naming the notebooks and the fix."""


@dataclass(frozen=True)
class BookSource:
    """One page of the book: the notebook to run, its executed copy, and how that copy was made."""

    notebook: Path
    executed: Path
    profile: str
    title: str

    @property
    def stem(self) -> str:
        return self.notebook.stem


def _read(path: Path) -> Any:
    import nbformat

    return nbformat.read(path, as_version=4)


def _cells(nb: Any) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells if _INJECTED not in c.metadata.get("tags", [])]


def _failure(executed: Any) -> str | None:
    """Why an executed notebook did not run to the end, or None."""
    record = executed.metadata.get("metalib", {})
    if record.get("status", "ok") != "ok":
        return record["status"]
    if executed.metadata.get("papermill", {}).get("exception"):
        return "failed"
    if any(o.get("output_type") == "error" for c in executed.cells for o in c.get("outputs", [])):
        return "failed"
    return None


def executed_sources(notebooks: Sequence[Path], output_root: Path,
                     profiles: Sequence[str] = BOOK_PROFILES) -> list[BookSource]:
    """Each notebook's executed copy in ``output_root/<profile>/`` (the first of ``profiles`` that has one).

    Raises :class:`BookError` naming every notebook without a usable copy: none executed, one that failed, or one
    executed from an older version of the notebook.
    """
    sources, problems = [], {"not executed": [], "failed": [], "changed since it ran": []}
    for notebook in notebooks:
        found = next((output_root / p / notebook.name for p in profiles if (output_root / p / notebook.name).exists()),
                     None)
        if found is None:
            problems["not executed"].append(notebook.stem)
            continue
        executed, source = _read(found), _read(notebook)
        if _failure(executed):
            problems["failed"].append(f"{notebook.stem} ({found.parent.name})")
        elif _cells(executed) != _cells(source):
            problems["changed since it ran"].append(f"{notebook.stem} ({found.parent.name})")
        else:
            sources.append(BookSource(notebook, found, found.parent.name, notebook_title(source)))
    said = [f"{what}: {', '.join(names)}" for what, names in problems.items() if names]
    if said:
        stems = [n.split()[0] for names in problems.values() for n in names]
        numbers = " ".join(s.split("_")[0] for s in stems)
        raise BookError(f"no usable executed copy in {output_root} of {'; '.join(said)}; run them first with "
                        f"`make run ARGS=\"--only {numbers}\"` (or build the others with --only)")
    return sources


# ------------------------------------------------------------------ the pages

def _provenance(source: BookSource, executed: Any) -> str:
    record = executed.metadata.get("metalib", {})
    papermill = executed.metadata.get("papermill", {})
    when = record.get("executed") or (papermill.get("end_time") or "an unrecorded date")[:16].replace("T", " ")
    machine = record.get("machine", "an unrecorded machine")
    versions = f" (Python {record['python']}, torch {record['torch']})" if "torch" in record else ""
    runtime = record.get("runtime_s", papermill.get("duration"))
    took = f" in {float(runtime):.0f} s" if runtime is not None else ""
    number = source.stem.split("_")[0]
    return (f":::{{admonition}} Executed with the {source.profile} profile\n:class: executed\n"
            f"This page is `{source.stem}.ipynb` as `make run` executed it with the **{source.profile}** profile on "
            f"{when}, on {machine}{versions}{took}. {_PROFILE_NOTE.get(source.profile, '')}\n\n"
            f"Run it yourself: {{download}}`{source.stem}.ipynb <../_run/{source.notebook.name}>` (the notebook "
            f"without outputs, `notebooks/{source.notebook.name}` in the repository), then `make lab`; or "
            f"`make run ARGS=\"--only {number}\"`.\n:::\n")


def _text_lines(cell: Any) -> int:
    lines = 0
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            lines += out.get("text", "").count("\n")
        elif "image/png" not in out.get("data", {}) and "text/html" not in out.get("data", {}):
            lines += str(out.get("data", {}).get("text/plain", "")).count("\n")
    return lines


def _has_figure(cell: Any) -> bool:
    return any(k.startswith("image/") for out in cell.get("outputs", []) for k in out.get("data", {}))


def notebook_page(source: BookSource) -> Any:
    """The executed notebook as the book shows it: the provenance box under the title, long text outputs
    collapsed, no stored widget state (widgets show the static figure they carry)."""
    import nbformat

    nb = _read(source.executed)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type == "code" and _text_lines(cell) > LONG_OUTPUT_LINES and not _has_figure(cell):
            cell.metadata["tags"] = [*cell.metadata.get("tags", []), "hide-output"]
    # the box goes right under the title: a first cell holding more than the title is split after it
    at = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), None)
    if at is None:
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(_provenance(source, nb)))
        return nb
    title, _, rest = nb.cells[at].source.partition("\n")
    if title.startswith("# ") and rest.strip():
        nb.cells[at].source = title
        nb.cells.insert(at + 1, nbformat.v4.new_markdown_cell(rest.lstrip("\n")))
    nb.cells.insert(at + 1, nbformat.v4.new_markdown_cell(_provenance(source, nb)))
    return nb


def zoo_rows() -> list[dict[str, str]]:
    """The model zoo as the landing page's table: one row per shipped model, test column and BatchNorm mode."""
    import pandas as pd

    from ..pretrained import results

    rows = []
    for r in results().itertuples():
        rows.append({
            "model": r.model, "test": f"{r.column}, {r.batchnorm} BN",
            "accuracy (%)": f"{100 * r.accuracy:.2f} ± {100 * r.ci95:.2f}",
            "published (%)": "" if pd.isna(r.published) else str(r.published).replace("+/-", "±"),
            "training": f"{r.train_min:.0f} min, {r.steps} steps", "machine": str(r.machine)})
    return rows


def _markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "(none)\n"
    head = list(rows[0])
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(r[k]) for k in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def readme_summaries(readme: Path) -> dict[str, str]:
    """What each notebook covers, from the README's table of notebooks (its row linking ``notebooks/<stem>.ipynb``,
    third column), so the book and the README say the same."""
    found = {}
    if readme.exists():
        for line in readme.read_text(encoding="utf-8").splitlines():
            link = re.search(r"\]\(notebooks/([^)]+)\.ipynb\)", line)
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.lstrip().startswith("|") and link and len(cells) >= 3:
                found[link.group(1)] = cells[2]
    return found


def _readme_intro(readme: Path) -> str:
    if not readme.exists():
        return ""
    text = readme.read_text(encoding="utf-8")
    body = text.split("\n", 1)[1] if text.startswith("# ") else text
    return body.split("\n## ", 1)[0].strip() + "\n"


def landing_page(sources: Sequence[BookSource], readme: Path) -> str:
    """The book's index: what the collection is, the map of the notebooks, the zoo, how to run it."""
    rows, covers = [], readme_summaries(readme)
    for s in sources:
        record = _read(s.executed).metadata.get("metalib", {})
        rows.append({"notebook": f"[{s.title or s.stem}](notebooks/{s.stem}.ipynb)",
                     "what it covers": covers.get(s.stem, ""),
                     "executed": f"{s.profile} profile, {record.get('executed', 'date not recorded')}"})
    toctree = "\n".join(f"notebooks/{s.stem}" for s in sources)
    return (f"# metalib notebooks\n\n{_readme_intro(readme)}\n## The notebooks\n\n{_markdown_table(rows)}\n"
            f"## The model zoo\n\nThe converged models that ship inside `metalib` (`metalib.pretrained`), each "
            f"re-evaluated in CI against its manifest: mean accuracy and 95% interval over 600 test tasks of the "
            f"Omniglot test classes (Vinyals split), with the figure its paper publishes and what training cost.\n\n"
            f"{_markdown_table(zoo_rows())}\n"
            f"## Run it\n\n```bash\nmake run     # execute every notebook (quick profile) into output/quick/\n"
            f"make test    # the test suite, every notebook compared with its baselines\nmake lab     # JupyterLab "
            f"with the project's kernel\nmake book    # this book, from the executed notebooks\n```\n\n"
            f"```{{toctree}}\n:hidden:\n:caption: Notebooks\n\n{toctree}\n```\n\n"
            f"```{{toctree}}\n:hidden:\n:caption: Reference\n\napi\n```\n")


# reStructuredText: autosummary finds its directives in .rst sources only
_API_PAGE = """API reference
=============

Generated from the docstrings of ``metalib``: every module, what a notebook cell imports and what it calls.

.. autosummary::
   :toctree: api
   :recursive:

   metalib
"""


# ------------------------------------------------------------------ building

_MATHJAX_PACKAGE = "sphinx-mathjax-offline"  # MathJax 3's browser build, as a wheel (the package's folder name)
_MATHJAX_FILES = ("tex-chtml-full.js", "output/chtml/fonts/woff-v2")  # the TeX input, HTML output and its fonts


def _copy_mathjax(dest: Path) -> None:
    """MathJax into ``dest`` (the site's ``_static/mathjax``), so that the book typesets offline."""
    import importlib.util

    spec = importlib.util.find_spec(_MATHJAX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BookError("the book needs its extra packages: pip install -r requirements.txt (or "
                        "pip install 'metalib[book]')")
    static = Path(spec.submodule_search_locations[0]) / "static" / "mathjax"
    for name in _MATHJAX_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (static / name).is_dir() else shutil.copy2
        copy(static / name, dest / name)


def _clear_ours(folder: Path) -> None:
    """Remove ``folder`` if this module wrote it (it holds the marker); refuse to touch anyone else's."""
    if folder.exists():
        if not (folder / _OURS).exists():
            raise BookError(f"{folder} exists and was not written by `make book`: move it away or pass another "
                            f"--output-dir")
        shutil.rmtree(folder)


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / _OURS).write_text("written by python -m metalib.runner book; removed by the next build\n")
    return folder


def assemble(sources: Sequence[BookSource], book_dir: Path, readme: Path, src: Path) -> Path:
    """Write the Sphinx source tree of the book into ``src`` (replacing an earlier one written here)."""
    import nbformat

    _clear_ours(src)
    _fresh(src)
    shutil.copy2(book_dir / "conf.py", src / "conf.py")
    shutil.copytree(book_dir / "_static", src / "_static")
    _copy_mathjax(src / "_static" / "mathjax")
    (src / "notebooks").mkdir()
    (src / "_run").mkdir()
    for s in sources:
        nbformat.write(notebook_page(s), src / "notebooks" / s.notebook.name)
        shutil.copy2(s.notebook, src / "_run" / s.notebook.name)
    (src / "index.md").write_text(landing_page(sources, readme), encoding="utf-8")
    (src / "api.rst").write_text(_API_PAGE, encoding="utf-8")
    return src


def build_book(sources: Sequence[BookSource], book_dir: Path, readme: Path, output_dir: Path,
               log: Any = print) -> Path:
    """Build the site into ``output_dir/html`` (swapped in whole when Sphinx succeeds); returns it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    src = assemble(sources, book_dir, readme, output_dir / "src")
    staging = output_dir / f".html-partial{os.getpid()}"
    _clear_ours(staging)
    _fresh(staging)
    warnings_file = output_dir / "sphinx-warnings.txt"
    start = time.monotonic()
    env = {**os.environ, "METALIB_PROGRESS": "0", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-q", "-w", str(warnings_file),
                           str(src), str(staging)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(staging)
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BookError(f"Sphinx failed on {src} ({tail[0]}); its warnings are in {warnings_file}")
    final = output_dir / "html"
    _clear_ours(final)
    os.replace(staging, final)
    warnings = [w for w in warnings_file.read_text().splitlines() if w.strip()] if warnings_file.exists() else []
    log(f"built {len(sources)} notebook page(s) into {final} in {time.monotonic() - start:.0f} s; "
        f"{len(warnings)} Sphinx warning line(s) in {warnings_file}")
    return final


# ------------------------------------------------------------------ checking

_NOT_PAGES = ("_static", "_sources", "_downloads", "_images")  # Sphinx's assets, not pages


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and ((tag in ("a", "link") and name == "href") or (tag in ("img", "script") and name == "src")):
                self.links.append(value)


def check_site(site: Path) -> list[str]:
    """Every local link, image and script of every page of ``site`` that does not resolve, as
    ``page: target``; links to other sites are not followed (the book loads nothing from the network)."""
    broken = []
    for page in sorted(p for p in site.rglob("*.html") if p.relative_to(site).parts[0] not in _NOT_PAGES):
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        for link in parser.links:
            parts = urlsplit(html.unescape(link))
            if parts.scheme or parts.netloc or not parts.path:
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)}: {link}")
    return broken

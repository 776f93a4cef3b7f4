"""The book (``make book``): built from executed notebooks, every page complete, the zoo table from the manifests."""
from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from metalib.runner import discover_notebooks, find_project, select_notebooks
from metalib.runner.book import (LONG_OUTPUT_LINES, BookError, assemble, check_site, executed_sources,
                                  readme_summaries)
from metalib.utils import PROGRESS_ENV, show_progress

PROJECT = find_project(Path(__file__).parent)
ROOT = PROJECT.notebooks_dir.parent


def _page(site: Path, stem: str) -> str:
    return (site / "notebooks" / f"{stem}.html").read_text(encoding="utf-8")


class _Tables(HTMLParser):
    """The text of every table cell, table by table, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.mark.slow
def test_every_link_image_and_script_of_the_book_resolves(built_book):
    site, sources = built_book
    assert check_site(site) == []
    pages = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    assert {f"notebooks/{s.stem}.html" for s in sources} | {"index.html", "api.html", "search.html"} <= pages
    assert len([p for p in pages if p.startswith("api/")]) > 20, "the API reference covers metalib's modules"
    assert "metalib.inner.core.InnerConfig" in (site / "api" / "metalib.inner.core.html").read_text()


def test_the_link_check_finds_a_broken_link(tmp_path):
    (tmp_path / "index.html").write_text('<a href="missing.html">x</a><img src="_images/a.png">'
                                         '<a href="https://example.org/">far</a><a href="#top">here</a>')
    assert check_site(tmp_path) == ["index.html: missing.html", "index.html: _images/a.png"]


@pytest.mark.slow
def test_notebook_pages_show_every_figure_their_provenance_and_no_error_or_stderr(built_book):
    site, sources = built_book
    for source in sources:
        page, executed = _page(site, source.stem), nbformat.read(source.executed, as_version=4)
        figures = sum(1 for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
        shown = re.findall(r'<img[^>]+src="\.\./_images/[^"]+\.png"', page)
        assert figures > 0 and len(shown) == figures, f"{source.stem}: {len(shown)} of {figures} figures shown"
        stderr = [o for c in executed.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
        assert not stderr, f"{source.stem} printed to stderr: {[o['text'][:200] for o in stderr]}"
        bars = [o for c in executed.cells for o in c.get("outputs", [])
                if "application/vnd.jupyter.widget-view+json" in o.get("data", {}) and "image/png" not in o["data"]]
        assert not bars, f"{source.stem} stored live widgets (progress bars?): {[o['data']['text/plain'] for o in bars]}"
        assert "output stderr" not in page and "output traceback" not in page  # MyST-NB's classes for them
        record = executed.metadata["metalib"]
        assert record["profile"] == "quick" and record["status"] == "ok"
        for said in ("Executed with the quick profile", record["machine"], record["executed"]):
            assert said in page, f"{source.stem}: the page does not say {said!r}"
        link = re.search(r'href="(\.\./_downloads/[^"]+/' + source.stem + r'\.ipynb)"', page)
        assert link, f"{source.stem}: no link to the notebook to run"
        clean = nbformat.read(site / "notebooks" / link.group(1), as_version=4)
        assert clean == nbformat.read(source.notebook, as_version=4), "the link gives the notebook without outputs"


@pytest.mark.slow
def test_the_landing_page_maps_the_notebooks_and_its_zoo_table_equals_the_manifests(built_book):
    from metalib.pretrained import results

    site, sources = built_book
    parser = _Tables()
    parser.feed((site / "index.html").read_text(encoding="utf-8"))
    notebooks, zoo = parser.tables
    covers = readme_summaries(ROOT / "README.md")
    assert [row[0] for row in notebooks[1:]] == [s.title for s in sources]
    assert all(row[1] and row[1].split()[0] in covers[s.stem] for row, s in zip(notebooks[1:], sources))
    expected = [[r.model, f"{r.column}, {r.batchnorm} BN", f"{100 * r.accuracy:.2f} ± {100 * r.ci95:.2f}"]
                for r in results().itertuples()]
    assert [row[:3] for row in zoo[1:]] == expected


def _project_copy(tmp_path: Path, stem: str = "02") -> tuple[list[Path], Path]:
    """A notebook of the collection and an executed copy of it (the notebook itself, stamped as run)."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "output" / "quick").mkdir(parents=True)
    [path] = select_notebooks(discover_notebooks(PROJECT.notebooks_dir), [stem])
    shutil.copy(path, tmp_path / "notebooks" / path.name)
    nb = nbformat.read(path, as_version=4)
    nb.metadata["metalib"] = {"profile": "quick", "status": "ok"}
    nbformat.write(nb, tmp_path / "output" / "quick" / path.name)
    return [tmp_path / "notebooks" / path.name], tmp_path / "output" / "quick" / path.name


@pytest.mark.parametrize("damage, said", [
    ("missing", "not executed: 02_task_construction"),
    ("edited", "changed since it ran: 02_task_construction (quick)"),
    ("failed", "failed: 02_task_construction (quick)"),
    ("error output", "failed: 02_task_construction (quick)"),
])
def test_the_book_refuses_an_executed_notebook_that_is_missing_stale_or_failed(tmp_path, damage, said):
    notebooks, executed = _project_copy(tmp_path)
    assert [s.profile for s in executed_sources(notebooks, tmp_path / "output")] == ["quick"]
    nb = nbformat.read(executed, as_version=4)
    if damage == "missing":
        executed.unlink()
    elif damage == "edited":
        nb.cells[-1].source += "\n# edited after the run"
        nbformat.write(nb, notebooks[0])
    elif damage == "failed":
        nb.metadata["metalib"]["status"] = "timeout"
        nbformat.write(nb, executed)
    else:
        code = next(c for c in nb.cells if c.cell_type == "code")
        code.outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="x", traceback=[])]
        nbformat.write(nb, executed)
    with pytest.raises(BookError) as caught:
        executed_sources(notebooks, tmp_path / "output")
    message = str(caught.value)
    assert said in message and 'make run ARGS="--only 02"' in message and "\n" not in message


def test_the_full_profile_copy_is_preferred_where_there_is_one(tmp_path):
    notebooks, executed = _project_copy(tmp_path)
    (tmp_path / "output" / "full").mkdir()
    shutil.copy(executed, tmp_path / "output" / "full" / executed.name)
    assert [s.profile for s in executed_sources(notebooks, tmp_path / "output")] == ["full"]
    assert [s.profile for s in executed_sources(notebooks, tmp_path / "output", ("quick",))] == ["quick"]


def test_the_book_never_clears_a_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "src" / "notes.md"
    mine.parent.mkdir()
    mine.write_text("my own notes")
    with pytest.raises(BookError, match="was not written by `make book`"):
        assemble([], ROOT / "book", ROOT / "README.md", tmp_path / "src")
    assert mine.read_text() == "my own notes"


def test_metalib_progress_0_turns_every_progress_bar_off(monkeypatch):
    """The runner's kernels get METALIB_PROGRESS=0 (their notebooks' bars are checked absent above); elsewhere the
    caller's choice stands."""
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert show_progress(True) and not show_progress(False)
    monkeypatch.setenv(PROGRESS_ENV, "0")
    assert not show_progress(True)


def test_every_notebook_has_a_line_in_the_readme_table_the_book_maps():
    covers = readme_summaries(ROOT / "README.md")
    assert sorted(covers) == sorted(p.stem for p in discover_notebooks(PROJECT.notebooks_dir))
    assert all(len(text) > 40 for text in covers.values()), json.dumps(covers)[:300]


def test_long_text_outputs_are_collapsed_figures_never_and_the_box_sits_under_the_title(tmp_path):
    from metalib.runner.book import BookSource, notebook_page

    notebooks, executed = _project_copy(tmp_path)
    nb = nbformat.read(executed, as_version=4)
    nb.cells[0].source = "# A title\n\nThe first paragraph."
    long_text = nbformat.v4.new_code_cell("print(many)", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="line\n" * (LONG_OUTPUT_LINES + 1))])
    figure = nbformat.v4.new_code_cell("plot()", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="line\n" * (LONG_OUTPUT_LINES + 1)),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})])
    short = nbformat.v4.new_code_cell("print(few)", outputs=[
        nbformat.v4.new_output("stream", name="stdout", text="line\n" * LONG_OUTPUT_LINES)])
    nb.cells += [long_text, figure, short]
    nb.metadata["widgets"] = {"state": {}}
    nbformat.write(nb, executed)
    page = notebook_page(BookSource(notebooks[0], executed, "quick", "A title"))
    tags = [c.metadata.get("tags", []) for c in page.cells[-3:]]
    assert tags == [["hide-output"], [], []]
    assert [c.source.split("\n")[0] for c in page.cells[:3]] == [
        "# A title", ":::{admonition} Executed with the quick profile", "The first paragraph."]
    assert "widgets" not in page.metadata


def test_the_book_extra_is_pinned_in_requirements():
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["book"]
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    names = [re.split(r"[<>=!~ ]", spec)[0] for spec in extra]
    assert names and all(name in pins for name in names), f"pin each of {names} in requirements.txt"

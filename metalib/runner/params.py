"""The parameters cell and the two profiles.

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
"""
from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from nbformat import NotebookNode

__all__ = ["PROFILES", "NotebookFormatError", "Parameter", "parse_parameters", "find_parameters_cell", "notebook_title",
           "notebook_parameters", "profile_parameters", "parse_cli_value"]

PROFILES = ("quick", "full")


class NotebookFormatError(ValueError):
    """A notebook breaks the collection's conventions (parameters cell, full-profile comments)."""


_NO_VALUE = object()
_FULL_COMMENT = re.compile(r"#\s*full\s*:(?P<rest>.*)$", re.IGNORECASE)
_LITERAL_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)


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
        except _LITERAL_ERRORS:
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


def notebook_title(nb: NotebookNode) -> str:
    """The notebook's title: its first markdown ``# `` heading ("" if none)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def read_notebook(path: Path) -> NotebookNode:
    """The notebook at ``path`` (nbformat 4); a :class:`NotebookFormatError` if it cannot be read."""
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
    nb = read_notebook(path)
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
    except _LITERAL_ERRORS:
        return text

"""The project folder: where the notebooks, their executed copies and their baselines live.

The runner does not assume where the ``metalib`` package is installed; it finds the project from a folder
(the working directory by default) by walking up to the first folder that holds ``notebooks/`` and a
``pyproject.toml`` or ``.git``. Its layout::

    notebooks/          the collection (NN_name.ipynb)
    output/<profile>/   executed notebooks and their metrics (git-ignored)
    tests/baselines/    the metric baselines, <stem>.json
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Project", "ProjectNotFoundError", "find_project"]

_MARKERS = ("pyproject.toml", ".git")


class ProjectNotFoundError(LookupError):
    """No folder at or above the start holds ``notebooks/`` and ``pyproject.toml`` or ``.git``."""


@dataclass(frozen=True)
class Project:
    """The folders of a notebook project."""

    notebooks_dir: Path
    output_root: Path
    baselines_dir: Path

    @classmethod
    def at(cls, root: str | Path) -> Project:
        """The standard layout below ``root``."""
        root = Path(root)
        return cls(root / "notebooks", root / "output", root / "tests" / "baselines")


def find_project(start: str | Path | None = None) -> Project:
    """The project holding ``start`` (default: the working directory); :class:`ProjectNotFoundError` if none."""
    start = Path.cwd() if start is None else Path(start).resolve()
    for folder in (start, *start.parents):
        if (folder / "notebooks").is_dir() and any((folder / m).exists() for m in _MARKERS):
            return Project.at(folder)
    raise ProjectNotFoundError(f"no project folder (one with notebooks/ and pyproject.toml or .git) at or "
                               f"above {start}")

"""The notebooks of a folder, and a selection of them by number or name."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["discover_notebooks", "select_notebooks"]


def discover_notebooks(directory: str | Path) -> list[Path]:
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

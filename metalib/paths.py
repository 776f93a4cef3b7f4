"""Where metalib reads and writes data; the only module that looks for a source checkout.

* :func:`data_dir`: a local dataset copy: the argument, else ``METALIB_DATA_DIR``, else none.
* :func:`cache_dir`: downloads and preprocessed caches: the argument, else
  ``METALIB_CACHE_DIR``, else ``<checkout>/data`` when metalib runs from a source checkout,
  else ``$XDG_CACHE_HOME/metalib`` or ``~/.cache/metalib`` (never next to site-packages).
* :func:`resolve`: the rule for every path given by argument or environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_CACHE", "ENV_DATA", "cache_dir", "process_running", "checkout_root", "data_dir", "default_cache_dir", "resolve"]

ENV_DATA = "METALIB_DATA_DIR"
ENV_CACHE = "METALIB_CACHE_DIR"

PathLike = str | os.PathLike[str]


def checkout_root() -> Path | None:
    """Root of the source checkout metalib runs from, or None for an installed copy."""
    root = Path(__file__).resolve().parents[1]
    if root.name in ("site-packages", "dist-packages"):
        return None
    if (root / "pyproject.toml").is_file() and (root / "metalib" / "data").is_dir():
        return root
    return None


def resolve(path: PathLike) -> Path:
    """Expand ``~``; a relative path that does not exist from the cwd is tried from the
    checkout root, so ``METALIB_DATA_DIR=../shared/data`` works from any folder of a checkout."""
    p = Path(path).expanduser()
    if not p.is_absolute() and not p.exists():
        root = checkout_root()
        if root is not None and (root / p).exists():
            return (root / p).resolve()
    return p


def data_dir(explicit: PathLike | None = None) -> Path | None:
    """Folder with a local dataset copy: ``explicit``, else ``METALIB_DATA_DIR``, else None."""
    if explicit is not None:
        return resolve(explicit)
    env = os.environ.get(ENV_DATA)
    return resolve(env) if env else None


def cache_dir(explicit: PathLike | None = None) -> Path:
    """Folder for downloads and caches (see the module docstring for the order)."""
    if explicit is not None:
        return resolve(explicit)
    env = os.environ.get(ENV_CACHE)
    if env:
        return resolve(env)
    root = checkout_root()
    if root is not None:
        return root / "data"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "metalib"


def default_cache_dir() -> Path:
    """``METALIB_CACHE_DIR``, else ``<checkout>/data`` in a source checkout, else the user
    cache folder: :func:`cache_dir` without an argument."""
    return cache_dir()


def process_running(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (assumed so where that cannot be told)."""
    if pid == os.getpid() or os.name != "posix":  # on Windows os.kill would terminate it
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # gone, or not a PID of this machine at all
        return False
    except OSError:  # e.g. it runs as another user
        return True
    return True

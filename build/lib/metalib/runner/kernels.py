"""Which Jupyter kernel runs the notebooks, and how each kernel is started for the runner.

``--kernel`` defaults to the ``metalib`` kernel (``make venv`` installs it); a kernel that is not installed
(or points to a missing interpreter) falls back to the interpreter running the runner.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["DEFAULT_KERNEL", "KernelChoice", "resolve_kernel", "kernel_manager_class", "python_literal_translator"]

DEFAULT_KERNEL = "metalib"


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


def kernel_manager_class(env: dict[str, str], cwd: Path, current_interpreter: bool,
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


def python_literal_translator() -> type:
    """Papermill's Python translator turns tuples and sets into strings; write them as literals instead."""
    from papermill.translators import PythonTranslator

    class LiteralTranslator(PythonTranslator):
        @classmethod
        def translate(cls, val: Any) -> str:
            if isinstance(val, (tuple, set, frozenset, complex, bytes)):
                return repr(val)
            return super().translate(val)

    return LiteralTranslator

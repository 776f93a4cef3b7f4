"""Checkable exercises at the end of each notebook.

Each exercise is a markdown cell (the task, a hint in a collapsed ``<details>`` block) and a code cell where the
reader writes an answer and calls :func:`check`::

    answer = None  # your answer: the inner learning rate with the lowest 1-step MSE
    check("04.2", answer, notebook04.verify_04_2, init=maml_init, batch=sweep_batch, hint="sweep `inner_lr` ...")

A check never raises: an answer left at ``None`` (as it is when papermill runs the notebook) prints that the
exercise is open, a wrong answer prints why and the hint, and an error inside the reader's answer or the test
is reported as one line. So the notebooks run clean in CI with every exercise unanswered, and a reader checks an
answer by running one cell. The test returns ``True``/``False`` or ``(ok, message)``; it runs only when there
is an answer, so it may compute (train a small model, evaluate a sampler) without slowing the CI run.

The tests of notebook NN's exercises are functions of :mod:`metalib.exercises.notebookNN` (``verify_NN_k``): they
take the answer and, by keyword, everything else they need from the notebook, which the cell passes to
:func:`check` explicitly; no test reads a notebook's globals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["ExerciseResult", "check"]

Test = Callable[[Any], "bool | tuple[bool, str]"]


@dataclass(frozen=True)
class ExerciseResult:
    """What :func:`check` found: ``status`` is ``"open"``, ``"correct"``, ``"wrong"`` or ``"error"``."""

    exercise: str
    status: str
    message: str = ""

    def __bool__(self) -> bool:
        return self.status == "correct"

    def __str__(self) -> str:
        return self.message

    def _ipython_display_(self) -> None:
        """Shown as a cell's last value: :func:`check` printed the message already (unless ``quiet``)."""


def check(exercise: str, answer: Any, test: Test, *, hint: str = "", quiet: bool = False, **inputs: Any) -> ExerciseResult:
    """Check ``answer`` to ``exercise`` with ``test(answer, **inputs)``, print one line and return the result
    (truthy when correct). ``None`` means not answered yet. Never raises for a wrong or broken answer."""
    if answer is None:
        status, text = "open", f"Exercise {exercise}: open. Write your answer above and run this cell again."
    else:
        try:
            outcome = test(answer, **inputs)
            ok, why = outcome if isinstance(outcome, tuple) else (bool(outcome), "")
            status = "correct" if ok else "wrong"
            text = f"Exercise {exercise}: correct." if ok else f"Exercise {exercise}: not yet. {why}".rstrip()
        except Exception as exc:  # the reader's answer is code too: report, never interrupt the notebook
            status, text = "error", f"Exercise {exercise}: your answer raised {type(exc).__name__}: {exc}"
        if status != "correct" and hint:
            text += f" Hint: {hint}"
    if not quiet:
        print(text)
    return ExerciseResult(exercise, status, text)

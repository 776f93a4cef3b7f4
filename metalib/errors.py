"""The base class of the errors a user can fix (a missing or corrupt dataset, an unknown device...)."""
from __future__ import annotations

__all__ = ["UserError", "ArgumentError"]


class UserError(Exception):
    """An error caused by a setting, a file or the machine, not by a bug in metalib.

    Its message is one line naming the argument or file and the fix, so the command-line
    interface prints these as one line without a traceback.
    """


class ArgumentError(UserError, ValueError):
    """An argument out of its range or of the wrong kind (a count, a name, a strategy); the message names it."""

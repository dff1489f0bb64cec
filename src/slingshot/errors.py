"""The only exceptions users see: a message saying what went wrong and where, and a hint saying how to fix it."""

from __future__ import annotations


class SlingshotError(Exception):
    """A fault the user can fix. The CLI prints `error: <message>` and `hint: <hint>` and exits 2."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class RecipeError(SlingshotError):
    """The recipe file or an override is invalid."""


class DataError(SlingshotError):
    """A data file is missing, malformed, or does not fit the task."""


class ModelError(SlingshotError):
    """A model cannot be resolved or built."""


class RunDirError(SlingshotError):
    """The run directory is missing, unfinished, or finished and protected from overwriting."""

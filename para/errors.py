"""Errors that carry the exit code and the hint a user needs to act on them."""

from __future__ import annotations


class ParaError(Exception):
    """A failure the user can fix; the CLI prints it without a traceback."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(ParaError):
    exit_code = 2


class FormatError(ParaError):
    """A .para file that cannot be read as it stands (says where and what to do)."""

    exit_code = 3

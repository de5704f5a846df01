"""User-facing errors.

Anything the user can fix (a bad file, config, flag or teacher reply) raises `UserError`.
The CLI prints its message without a traceback and exits with code 2 (convention 8).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix. The message says what is wrong, where, and how to fix it."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n{hint}")

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.message if self.hint is None else f"{self.message}\n{self.hint}"


def report(err: UserError) -> int:
    """Print a UserError on stderr (message, then its hint) and return its exit code.

    The one place a UserError becomes output: the CLI and every `python -m protege.<stage>` entry call it.
    """
    import sys

    print(f"error: {err.message}", file=sys.stderr)
    if err.hint:
        print(err.hint if err.hint.lower().startswith("hint") else f"hint: {err.hint}", file=sys.stderr)
    return err.exit_code

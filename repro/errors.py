"""One exception family for everything a user can get wrong or a check can find.

The CLI turns a ReproError into a single stderr line and an exit status; nothing else in the
package prints. `hint` tells the user what to do next.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class ReproError(Exception):
    """Bad input or a failed operation, with a hint for the user."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class DigestMismatch(ReproError):
    """Content does not match the digest or size that names it."""


class CheckFailed(ReproError):
    """A verification found a difference (verify, replay, diff): exit status 1."""

    exit_code = EXIT_CHECK_FAILED

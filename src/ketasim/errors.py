"""Error family: every user-facing error names the field and what is allowed.

The CLI maps :class:`KetasimError` to exit code 2 with a one-line message; the web API maps it
to HTTP 422.
"""

from __future__ import annotations


class KetasimError(ValueError):
    """A user input or card problem, reported as one line naming the field."""

    def __init__(self, field: str, problem: str, allowed: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.allowed = allowed
        msg = f"{field}: {problem}"
        if allowed:
            msg += f" (allowed: {allowed})"
        super().__init__(msg)


class CardError(KetasimError):
    """A data card is malformed or inconsistent."""


class StudiedRangeWarning(UserWarning):
    """A covariate lies outside the population a PK model was estimated in."""

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


#: the largest seed anywhere (a scenario's ``population.seed``, CLI ``--seed``)
MAX_SEED = 2**63 - 1


def check_int(field: str, value: object, lo: int, hi: int) -> int:
    """``value`` as an ``int`` if it is a whole number (not a bool) in ``lo..hi``; otherwise
    :class:`KetasimError` naming ``field``. Accepts Python and NumPy integers."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or not lo <= value <= hi:
        raise KetasimError(field, f"must be a whole number {lo}..{hi}, got {value!r}")
    return int(value)


def check_callable(field: str, value: object) -> None:
    """:class:`KetasimError` naming ``field`` unless ``value`` is ``None`` or callable (a
    progress callback)."""
    if value is not None and not callable(value):
        raise KetasimError(field, f"must be a function or None, got {type(value).__name__}")

"""Progress display for long runs (rich, on stderr): shown only on a terminal and only once a
run has lasted ``delay_s`` (1 s), so short runs, pipes and ``--json`` output stay clean.

* :class:`RichProgress`: a bar of items done / total (patients of a trial, MCMC steps) with an
  optional final line ``N patients in T s (X patients/s)``.
* :class:`RichStatus`: a spinner with a message, for runs whose length is not known in
  advance (a population fit: optimiser iterations, then the covariance step and profiles).

The library reports progress through plain callables (``progress(done, total)`` or
``progress(message)``) and never imports this module; the command line builds these.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class _Delayed:
    """Shared part: the console (stderr by default), the delay and the clock."""

    def __init__(self, console=None, delay_s: float = 1.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console(stderr=True)
        self.delay_s = delay_s
        self.clock = clock
        self.t0 = clock()

    def _due(self) -> bool:
        """True once the run is long enough to show something, on a terminal."""
        return self.console.is_terminal and self.clock() - self.t0 >= self.delay_s


class RichProgress(_Delayed):
    """A rich progress bar of ``label`` done / total on stderr, shown once a run has lasted
    ``delay_s`` (1 s) and only on a terminal, and a final line
    ``N patients in T s (X patients/s)`` from :meth:`finish` (always printed)."""

    def __init__(self, label: str = "patients", console=None, delay_s: float = 1.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(console, delay_s, clock)
        self.label = label
        self.first_done: int | None = None
        self.done = 0
        self.bar = None
        self.task = None

    def __call__(self, done: int, total: int) -> None:
        if self.first_done is None:
            self.first_done = done  # patients resumed from shards, not simulated now
        self.done = done
        if self.bar is None:
            if not self._due():
                return
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(),
                                TimeRemainingColumn(), console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=total)
        self.bar.update(self.task, completed=done)

    def close(self) -> None:
        """Stop and remove the progress bar."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def finish(self) -> str:
        """Stop the bar and print (and return) the final line."""
        self.close()
        dt = max(self.clock() - self.t0, 1e-9)
        n = self.done - (self.first_done or 0)
        line = f"{n:,} patients in {dt:.1f} s ({n / dt:,.1f} patients/s)"
        if self.first_done:
            line += f"; {self.first_done:,} resumed from shards"
        self.console.print(line, highlight=False, markup=False)
        return line


class RichStatus(_Delayed):
    """A spinner with the latest message (``status(message)``) and the elapsed time on
    stderr, shown once a run has lasted ``delay_s`` (1 s) and only on a terminal; the last
    message is kept in :attr:`message` and every message in :attr:`messages`."""

    def __init__(self, label: str, console=None, delay_s: float = 1.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(console, delay_s, clock)
        self.label = label
        self.message = ""
        self.messages: list[str] = []
        self.status = None

    def _text(self) -> str:
        return f"{self.label}: {self.message} ({self.clock() - self.t0:.0f} s)"

    def __call__(self, message: str) -> None:
        self.message = message
        self.messages.append(message)
        if self.status is None:
            if not self._due():
                return
            self.status = self.console.status(self._text(), spinner="dots")
            self.status.start()
        self.status.update(self._text())

    def close(self) -> None:
        """Stop and remove the spinner."""
        if self.status is not None:
            self.status.stop()
            self.status = None

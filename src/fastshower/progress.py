"""Progress of long jobs: a live bar on a terminal, periodic plain lines in a log.

``fastshower simulate ... > log 2>&1 &`` (nohup, Dask, CI) has no terminal to draw a bar on, so
the same tracker prints ``what: done/total (pct), rate, elapsed, ETA`` every
``FASTSHOWER_PROGRESS_SECONDS`` (default 30) seconds and once at the end.
"""

from __future__ import annotations

import os
import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class Tracker:
    """``with Tracker("simulating", total=n, unit="showers") as t: t.update(advance=k)``.

    ``fields`` are extra values shown after the rate (e.g. a loss), set with ``update``.
    """

    def __init__(self, what: str, total: int, unit: str = "showers", completed: int = 0,
                 enabled: bool = True, console: Console | None = None, **fields):
        self.what, self.total, self.unit = what, int(total), unit
        self.completed = self.start = int(completed)
        self.fields = {k: str(v) for k, v in fields.items()}
        self.enabled = enabled
        self.console = console or Console()
        self.live = enabled and self.console.is_terminal
        self.every = float(os.environ.get("FASTSHOWER_PROGRESS_SECONDS", "30"))
        self._bar: Progress | None = None
        self.printed = -1

    def __enter__(self) -> Tracker:
        self.t0 = self.last = time.monotonic()
        if self.live:
            extra = "  ".join(f"{k} {{task.fields[{k}]}}" for k in self.fields)
            self._bar = Progress(TextColumn(self.what), BarColumn(), MofNCompleteColumn(),
                                 TextColumn(f"{{task.fields[rate]}}  {extra}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.what, total=self.total,
                                            completed=self.completed, rate="", **self.fields)
        elif self.enabled:
            self._line()
        return self

    def rate(self) -> float:
        """Items per second since this tracker started (resumed items not counted)."""
        return (self.completed - self.start) / max(time.monotonic() - self.t0, 1e-9)

    def update(self, completed: int | None = None, advance: int = 0, total: int | None = None,
               **fields) -> None:
        self.completed = int(completed) if completed is not None else self.completed + advance
        self.total = self.total if total is None else int(total)
        self.fields.update({k: str(v) for k, v in fields.items()})
        if self._bar is not None:
            self._bar.update(self._task, completed=self.completed, total=self.total,
                             rate=f"{self.rate():.3g} {self.unit}/s", **self.fields)
        elif self.enabled and time.monotonic() - self.last >= self.every:
            self._line()

    def _line(self) -> None:
        self.last = now = time.monotonic()
        self.printed = self.completed
        rate = self.rate()
        left = self.total - self.completed
        eta = _duration(left / rate) if rate > 0 and left > 0 else ("0m00s" if left <= 0 else "-")
        pct = 100.0 * self.completed / max(self.total, 1)
        extra = "".join(f", {k} {v}" for k, v in self.fields.items())
        print(f"{self.what}: {self.completed}/{self.total} {self.unit} ({pct:.0f} %), "
              f"{rate:.3g} {self.unit}/s, elapsed {_duration(now - self.t0)}, ETA {eta}{extra}",
              file=sys.stdout, flush=True)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif self.enabled and exc[0] is None and self.printed != self.completed:
            self._line()

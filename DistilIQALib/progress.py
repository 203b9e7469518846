"""One progress type for every long loop: it reports and it carries cancellation.

The engine calls :meth:`Progress.update`; the command line draws a bar from it, Slicer
moves its progress bar. :meth:`Progress.cancel` may be called from any thread (e.g. a
Cancel button); the next ``update`` then raises :class:`~DistilIQALib.errors.Cancelled`.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Callable, Optional

from .errors import Cancelled

#: Prefix of the machine-readable progress lines a child process prints (one JSON object after it).
PROGRESS_PREFIX = "DISTILIQA-PROGRESS "

#: ``callback(done, total, stage)``: ``done`` of ``total`` units of ``stage`` are finished.
ProgressCallback = Callable[[int, int, str], None]


class Progress:
    def __init__(self, callback: Optional[ProgressCallback] = None) -> None:
        self._callback = callback
        self._cancel = threading.Event()
        self.started = time.monotonic()

    def update(self, done: int, total: int, stage: str = "") -> None:
        if self._callback is not None:
            self._callback(done, total, stage)
        self.check()

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        if self._cancel.is_set():
            raise Cancelled("cancelled by the user")

    def seconds_left(self, done: int, total: int) -> Optional[float]:
        """Estimated seconds to finish, from the average pace so far."""
        if done <= 0:
            return None
        return (time.monotonic() - self.started) * (total - done) / done


def progress_line_callback(task: str, stream: Optional[IO[str]] = None, **fields) -> ProgressCallback:
    """A callback that prints each update as one ``DISTILIQA-PROGRESS {"task", "done", "total", "stage", ...}``
    line (flushed at once; ``fields`` are added to every line), which a parent process, e.g. Slicer's panel,
    turns into its progress bar."""

    def emit(done: int, total: int, stage: str) -> None:
        record = {"task": task, "done": done, "total": total, "stage": stage, **fields}
        line = PROGRESS_PREFIX + json.dumps(record)
        print(line, file=stream or sys.stdout, flush=True)

    return emit


def chain(*callbacks: Optional[ProgressCallback]) -> ProgressCallback:
    """One callback that calls each of ``callbacks`` (``None`` entries are skipped)."""
    active = [callback for callback in callbacks if callback is not None]

    def call_all(done: int, total: int, stage: str) -> None:
        for callback in active:
            callback(done, total, stage)

    return call_all

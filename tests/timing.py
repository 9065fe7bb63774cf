"""Wall-clock budgets that follow the machine (issue 15, item 13).

A test that waits for something (a line, a record, a process being ready) gives it a
budget written for an unloaded machine; ``budget(s)`` scales it by a factor:

* ``MOTCUA_TEST_TIME_SCALE``, if set: a number > 0 (below 1 shortens every wait, which is
  how a deadline is shown to still catch a failure);
* else measured once per session: a fixed CPU-bound loop, timed against ``REFERENCE_S``,
  clamped to [1, 5], so a fast machine never gets less than the written budget.

A budget that *is* what a test proves (SIGTERM stops within 5 s, a commit shows within G7's
second, a lease's length) is a guarantee, not a wait: it is not scaled.

``LineReader`` reads a child's output on a thread, so that waiting for a line has a
deadline: a blocked ``readline()`` on the pipe has none.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable
from functools import cache
from typing import IO, TypeVar

SETTING = "MOTCUA_TEST_TIME_SCALE"
#: The calibration loop's wall time on the machine the budgets were written on: a 2-core
#: Intel Xeon VM, CPython 3.11.7, idle (load average < 1); best of six runs 0.148 s, most
#: 0.15-0.17 s.
REFERENCE_S = 0.16
LOWEST, HIGHEST = 1.0, 5.0

T = TypeVar("T")


class TimeScaleError(ValueError):
    """MOTCUA_TEST_TIME_SCALE is not a number > 0."""


def parse_scale(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise TimeScaleError(f"{SETTING}={raw!r}: not a number; set a factor > 0 that "
                             "multiplies every test's wait (e.g. 2), or unset it to "
                             "measure the machine") from None
    if not value > 0 or value == float("inf"):  # also refuses nan
        raise TimeScaleError(f"{SETTING}={raw!r}: must be a finite number > 0 "
                             "(e.g. 2 doubles every test's wait)")
    return value


def calibrate() -> float:
    """Wall time of a fixed CPU-bound loop (~0.16 s idle here): slower on a slower or
    busier machine."""
    started = time.perf_counter()
    acc = 0
    for i in range(2_400_000):
        acc = (acc * 31 + i) % 1_000_003
    return time.perf_counter() - started


@cache
def measured_factor() -> float:
    return min(HIGHEST, max(LOWEST, calibrate() / REFERENCE_S))


def factor() -> float:
    """The setting if there is one (read each time: a test may set it), else measured once
    per session."""
    raw = os.environ.get(SETTING)
    if raw is not None and raw.strip():
        return parse_scale(raw)
    return measured_factor()


def describe() -> str:
    """For the session header: the factor and where it came from."""
    raw = os.environ.get(SETTING)
    source = f"{SETTING}={raw}" if raw is not None and raw.strip() else \
        f"measured, clamped to [{LOWEST:g}, {HIGHEST:g}]"
    return f"test time scale: {factor():.2f} ({source})"


def budget(seconds: float) -> float:
    """``seconds`` as written for an unloaded machine, scaled to this one."""
    return seconds * factor()


class Deadline:
    """A scaled budget that started now: ``Deadline(20, "motcua is up")``."""

    def __init__(self, seconds: float, what: str) -> None:
        self.written = seconds
        self.scale = factor()
        self.seconds = seconds * self.scale
        self.what = what
        self.started = time.monotonic()
        self.end = self.started + self.seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def message(self, detail: str = "") -> str:
        said = (f"timed out waiting for {self.what}: budget {self.seconds:.3g} s "
                f"({self.written:g} s x time scale {self.scale:.2f})")
        return f"{said}\n{detail}" if detail else said

    def fail(self, detail: str = "") -> AssertionError:
        """The error to raise: ``raise deadline.fail(...)``."""
        return AssertionError(self.message(detail))


def poll_until(predicate: Callable[[], T], seconds: float, what: str, interval: float = 0.1,
               detail: Callable[[], str] | None = None) -> T:
    """Call ``predicate`` until it returns something true, and return that; fail after
    ``budget(seconds)`` naming ``what`` and the budget (``detail()`` adds the state)."""
    deadline = Deadline(seconds, what)
    while True:
        result = predicate()
        if result:
            return result
        if deadline.expired():
            raise deadline.fail(detail() if detail is not None else "")
        time.sleep(min(interval, max(0.01, deadline.remaining())))


_EOF = object()


class LineReader:
    """A child's text output, read on a daemon thread into a queue: each wait for a line
    ends at its deadline even when the child prints nothing. Every line read is also kept
    in ``lines`` (without its newline)."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None, "the child's output is not a pipe"
        self.lines: list[str] = []
        self._queue: queue.Queue[object] = queue.Queue()
        self._eof = False
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._queue.put(line)
        except (OSError, ValueError):  # the pipe was closed under us
            pass
        finally:
            self._queue.put(_EOF)

    def next(self, deadline: Deadline) -> str | None:
        """The next line (newline stripped), None at the end of the output; raises at the
        deadline."""
        if self._eof:
            return None
        try:
            item = self._queue.get(timeout=deadline.remaining() or 0.001)
        except queue.Empty:
            raise deadline.fail("output so far:\n" + self.text()) from None
        if item is _EOF:
            self._eof = True
            return None
        assert isinstance(item, str)
        line = item.rstrip("\n")
        self.lines.append(line)
        return line

    def line(self, seconds: float, what: str) -> str:
        """The next line, within ``budget(seconds)``; the end of the output fails too."""
        deadline = Deadline(seconds, what)
        got = self.next(deadline)
        if got is None:
            raise AssertionError(f"the output ended while waiting for {what}:\n{self.text()}")
        return got

    def until(self, done: str, seconds: float, what: str | None = None) -> list[str]:
        """Lines read from here up to the first that contains ``done`` (included), within
        ``budget(seconds)``; the end of the output fails too."""
        deadline = Deadline(seconds, what or f"a line with {done!r}")
        start = len(self.lines)
        while (line := self.next(deadline)) is not None:
            if done in line:
                return self.lines[start:]
            if deadline.expired():  # a chatty child: lines, never the one awaited
                raise deadline.fail("output so far:\n" + self.text())
        raise AssertionError(f"the output ended before a line with {done!r}:\n{self.text()}")

    def seen(self, text: str) -> bool:
        """Whether a line read so far (reading on, without waiting) contains ``text``."""
        self.drain()
        return any(text in line for line in self.lines)

    def drain(self) -> None:
        """Take every line already read by the thread, without waiting."""
        while not self._eof:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is _EOF:
                self._eof = True
            else:
                assert isinstance(item, str)
                self.lines.append(item.rstrip("\n"))

    def rest(self, seconds: float, what: str = "the end of the output") -> str:
        """Everything from here to the end of the output (the child has exited or is
        exiting), within ``budget(seconds)``."""
        deadline = Deadline(seconds, what)
        start = len(self.lines)
        while self.next(deadline) is not None:
            if deadline.expired():
                raise deadline.fail("output so far:\n" + self.text())
        return "".join(line + "\n" for line in self.lines[start:])

    def text(self) -> str:
        """Every line read so far."""
        return "\n".join(self.lines)

"""tests/timing.py: budgets scaled by a setting or by the machine's measured speed, polls
that fail naming what they waited for, and line reads that cannot block past a deadline."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests import timing
from tests.timing import SETTING, Deadline, LineReader, TimeScaleError, budget, poll_until


@pytest.mark.parametrize("raw", ["fast", "0", "-2", "nan", "inf", "1,5"])
def test_a_bad_setting_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(SETTING, raw)
    with pytest.raises(TimeScaleError, match=f"{SETTING}=") as caught:
        budget(5)
    assert repr(raw) in str(caught.value)
    assert "> 0" in str(caught.value)


def test_the_setting_scales_every_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTING, "2.5")
    assert budget(4) == 10.0
    monkeypatch.setenv(SETTING, "0.01")
    assert budget(5) == pytest.approx(0.05)
    assert "MOTCUA_TEST_TIME_SCALE=0.01" in timing.describe()


def test_without_the_setting_the_measured_factor_is_clamped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SETTING, raising=False)
    real = timing.calibrate
    for took, expected in ((timing.REFERENCE_S / 3, 1.0),  # fast: never below the written
                           (timing.REFERENCE_S * 2, 2.0),
                           (timing.REFERENCE_S * 40, 5.0)):  # an outlier: at most 5 x
        timing.measured_factor.cache_clear()
        monkeypatch.setattr(timing, "calibrate", lambda t=took: t)
        assert budget(10) == pytest.approx(10 * expected)
    timing.measured_factor.cache_clear()
    monkeypatch.setattr(timing, "calibrate", real)
    assert 1.0 <= timing.measured_factor() <= 5.0  # the real loop, measured once
    assert "measured" in timing.describe()


def test_poll_until_returns_what_the_predicate_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTING, "1")
    calls: Iterator[object] = iter([0, None, [], 7])
    assert poll_until(lambda: next(calls), 5, "the fourth call", interval=0.01) == 7


def test_poll_until_fails_at_the_scaled_deadline_naming_what_and_the_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTING, "0.1")
    started = time.monotonic()
    with pytest.raises(AssertionError) as caught:
        poll_until(lambda: False, 3, "the kettle to boil", detail=lambda: "still cold")
    took = time.monotonic() - started
    assert 0.3 <= took < 1.5, took
    said = str(caught.value)
    assert "timed out waiting for the kettle to boil: budget 0.3 s" in said
    assert "3 s x time scale 0.10" in said and said.endswith("still cold")


def test_a_deadline_counts_from_its_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTING, "0.05")
    deadline = Deadline(2, "nothing")
    assert deadline.seconds == pytest.approx(0.1) and not deadline.expired()
    time.sleep(0.15)
    assert deadline.expired() and deadline.remaining() == 0.0


def _child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_a_silent_child_cannot_hold_a_line_read_past_its_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The child prints nothing and sleeps for a minute: ``readline()`` would block that
    minute; the reader fails at its deadline, naming what it waited for."""
    monkeypatch.setenv(SETTING, "1")
    proc = _child("import time; time.sleep(60)")
    try:
        reader = LineReader(proc.stdout)
        started = time.monotonic()
        with pytest.raises(AssertionError, match=r"waiting for the bootstrap line: budget 1 s"):
            reader.line(1, "the bootstrap line")
        with pytest.raises(AssertionError, match="waiting for a line with 'up'"):
            reader.until("up", 0.5)
        took = time.monotonic() - started
        assert 1.5 <= took < 3.0, f"{took:.1f} s"
        assert proc.poll() is None  # it was the reader that gave up, not the child
    finally:
        proc.kill()
        proc.wait()


def test_a_half_line_does_not_count_as_a_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A partial line without its newline (a child stuck mid-print) blocks ``readline()``
    as well: still the deadline."""
    monkeypatch.setenv(SETTING, "1")
    proc = _child("import sys, time; sys.stdout.write('bootstr'); sys.stdout.flush(); "
                  "time.sleep(60)")
    try:
        started = time.monotonic()
        with pytest.raises(AssertionError, match=r"budget 0\.5 s"):
            LineReader(proc.stdout).line(0.5, "a whole line")
        assert time.monotonic() - started < 2.0
    finally:
        proc.kill()
        proc.wait()


def test_a_chatty_child_cannot_hold_a_wait_for_a_line_past_its_deadline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines keep coming, never the awaited one: the wait still ends at its deadline."""
    monkeypatch.setenv(SETTING, "1")
    proc = _child("import time\nwhile True:\n    print('tick', flush=True)\n"
                  "    time.sleep(0.01)\n")
    try:
        reader = LineReader(proc.stdout)
        started = time.monotonic()
        with pytest.raises(AssertionError, match=r"waiting for a line with 'up': budget 0\.5 s"):
            reader.until("up", 0.5)
        with pytest.raises(AssertionError, match="waiting for the end"):
            reader.rest(0.5, "the end")
        assert time.monotonic() - started < 3.0
        assert "tick" in reader.lines
    finally:
        proc.kill()
        proc.wait()


def test_lines_until_a_marker_then_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTING, "1")
    proc = _child("import time\nfor w in ('a', 'b', 'ready', 'c'):\n    print(w, flush=True)\n"
                  "    time.sleep(0.05)\n")
    try:
        reader = LineReader(proc.stdout)
        assert reader.line(10, "the first line") == "a"
        assert reader.until("ready", 10) == ["b", "ready"]
        assert proc.wait(10) == 0
        assert reader.rest(10) == "c\n"
        assert reader.lines == ["a", "b", "ready", "c"]
        assert reader.next(Deadline(1, "more")) is None  # the end, said again
        assert reader.seen("ready") and not reader.seen("z")
    finally:
        proc.kill()
        proc.wait()


def test_output_that_ends_before_the_marker_fails_with_what_was_said(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SETTING, "1")
    proc = _child("print('error: port in use')")
    try:
        with pytest.raises(AssertionError, match="ended before a line with 'is up'") as caught:
            LineReader(proc.stdout).until("is up", 10)
        assert "error: port in use" in str(caught.value)
    finally:
        proc.kill()
        proc.wait()

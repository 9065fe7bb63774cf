"""Office time arithmetic for the simulator; the sessions themselves are schemas/office.py."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from schemas.events import LOCAL_TZ
from schemas.office import SATURDAY, SESSIONS, sessions_on

__all__ = ["SATURDAY", "SESSIONS", "add_business_days", "add_office_hours", "at",
           "open_at_or_after", "sessions_on"]


def at(day: date, clock: time) -> datetime:
    return datetime.combine(day, clock, LOCAL_TZ)


def open_at_or_after(t: datetime) -> datetime:
    """``t`` if the office is open then, else its next opening."""
    t = t.astimezone(LOCAL_TZ)
    day = t.date()
    for _ in range(14):
        for start, end in sessions_on(day):
            if t < at(day, end):
                return max(t, at(day, start))
        day += timedelta(days=1)
        t = at(day, time(0, 0))
    raise AssertionError("no office session within two weeks")


def add_office_hours(t: datetime, hours: float) -> datetime:
    """The moment ``hours`` of office time after ``t`` (counting from the next opening)."""
    t = open_at_or_after(t)
    left = timedelta(hours=hours)
    while True:
        end = next(at(t.date(), e) for s, e in sessions_on(t.date()) if at(t.date(), s) <= t
                   < at(t.date(), e))
        if t + left <= end:
            return t + left
        left -= end - t
        t = open_at_or_after(end)


def add_business_days(day: date, n: int) -> date:
    """``n`` weekdays after ``day`` (Saturday and Sunday skipped)."""
    while n > 0:
        day += timedelta(days=1)
        if day.weekday() < 5:
            n -= 1
    return day

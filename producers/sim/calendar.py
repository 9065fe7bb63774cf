"""Office time in Hưng Yên's one-stop centres, as the simulator models it (an assumption):
Monday-Friday 07:30-11:30 and 13:30-17:00, Saturday morning. Local time (+07:00)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

from schemas.events import LOCAL_TZ

SESSIONS = ((time(7, 30), time(11, 30)), (time(13, 30), time(17, 0)))
SATURDAY = ((time(7, 30), time(11, 30)),)


def sessions_on(day: date) -> tuple[tuple[time, time], ...]:
    wd = day.weekday()
    return SESSIONS if wd < 5 else SATURDAY if wd == 5 else ()


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

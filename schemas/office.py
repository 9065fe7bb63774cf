"""Office time in Hưng Yên's one-stop centres (an assumption, as the simulator models it):
Monday-Friday 07:30-11:30 and 13:30-17:00, Saturday morning, local time (+07:00). The
simulator paces its days by it; a wall board only raises the alarm on silence within it."""

from __future__ import annotations

from datetime import date, time

SESSIONS = ((time(7, 30), time(11, 30)), (time(13, 30), time(17, 0)))
SATURDAY = ((time(7, 30), time(11, 30)),)


def sessions_on(day: date) -> tuple[tuple[time, time], ...]:
    wd = day.weekday()
    return SESSIONS if wd < 5 else SATURDAY if wd == 5 else ()


def week_sessions() -> list[list[list[str]]]:
    """Each weekday's sessions (Monday first) as ``[["07:30", "11:30"], ...]``, for a page
    that judges office time in the browser."""
    monday = date(2025, 7, 7)
    return [[[s.strftime("%H:%M"), e.strftime("%H:%M")]
             for s, e in sessions_on(date.fromordinal(monday.toordinal() + d))]
            for d in range(7)]

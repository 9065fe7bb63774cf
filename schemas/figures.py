"""Figures and rates for a range of days, from day counters (``motcua counters``, the
displays, the audit): the flows in the range, the stocks at its end, the backlog carried
over, and the published rates (online, late, on time) rounded as published."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal

from schemas.counters import FLOWS, HANDLED_BY, RECEIVED, STOCKS


def percent(numerator: int, denominator: int) -> Decimal | None:
    """A percentage rounded half up to two decimals, as published (83.55)."""
    if denominator <= 0:
        return None
    return (Decimal(100 * numerator) / Decimal(denominator)).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class Figures:
    """The figures of one scope for local dates ``start``..``end``, both inclusive."""
    scope: str
    start: date
    end: date
    flows: dict[str, int]
    stocks_at_end: dict[str, int]
    backlog: int  # open (in progress + paused) at the end of the day before ``start``

    @property
    def received(self) -> int:
        return self.flows[RECEIVED]

    @property
    def online_rate(self) -> Decimal | None:
        return percent(self.flows["received.online"], self.received)

    @property
    def late_rate(self) -> Decimal | None:
        """DESIGN.md: (late in progress + late handled) ÷ (received + backlog carried over)."""
        late = (self.stocks_at_end["overdue.in_progress"] + self.stocks_at_end["overdue.paused"]
                + self.flows["handled.late"])
        return percent(late, self.received + self.backlog)

    @property
    def on_time_rate(self) -> Decimal | None:
        late = self.late_rate
        return None if late is None else Decimal(100) - late

    def as_dict(self) -> dict[str, object]:
        rate = {"online_rate": self.online_rate, "late_rate": self.late_rate,
                "on_time_rate": self.on_time_rate}
        return {
            "scope": self.scope, "from": self.start.isoformat(), "to": self.end.isoformat(),
            **self.flows,
            "handled": sum(self.flows[m] for m in HANDLED_BY),
            "in_progress": self.stocks_at_end["open.in_progress"],
            "paused": self.stocks_at_end["open.paused"],
            "overdue.in_progress": self.stocks_at_end["overdue.in_progress"],
            "overdue.paused": self.stocks_at_end["overdue.paused"],
            "backlog_carried_over": self.backlog,
            **{k: None if v is None else str(v) for k, v in rate.items()},
        }


def figures(day_counters: Mapping[tuple[str, str], int], scope: str, start: date,
            end: date) -> Figures:
    """Figures from *day* counters of one scope, given as {(day 'YYYY-MM-DD', measure): n}."""
    if end < start:
        raise ValueError(f"--to {end} is before --from {start}")
    lo, hi, before = start.isoformat(), end.isoformat(), (start - timedelta(days=1)).isoformat()
    flows = dict.fromkeys(FLOWS, 0)
    stocks = dict.fromkeys(STOCKS, 0)
    backlog = 0
    for (day, measure), value in day_counters.items():
        if measure in flows:
            if lo <= day <= hi:
                flows[measure] += value
        elif measure in stocks:
            if day <= hi:
                stocks[measure] += value
            if day <= before and measure.startswith("open."):
                backlog += value
    return Figures(scope, start, end, flows, stocks, backlog)

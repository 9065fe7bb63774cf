"""``motcua audit replay``: the figures of any period recomputed from the archived events.

The events are folded and counted by ``schemas.counters.recount`` (the fold and the
counter contributions the stream worker's projector calls) and turned into figures by
``schemas.figures`` (what ``motcua counters`` and the wall boards call), so a replay and
the live figures can only differ if the events differ: that is G4. Every event of the
archive is read, not only the period's: a period's stocks (in progress at its end, the
backlog carried into it) depend on what came before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

from consumers.audit.store import Archive
from schemas.codec import decode
from schemas.counters import RULES_VERSION, CounterKey, is_day, recount
from schemas.events import AnyEvent
from schemas.figures import Figures, figures


@dataclass(frozen=True)
class Replay:
    counters: dict[CounterKey, int]
    events: int
    rules: str = RULES_VERSION  # the counter rules the figures were computed by

    def figures(self, scope: str, start: date, end: date) -> Figures:
        days = {(period, measure): n for (s, period, measure), n in self.counters.items()
                if s == scope and is_day(period)}
        return figures(days, scope, start, end)


def replay(archive: Archive) -> Replay:
    """Every archived event, recounted."""
    count = 0

    def read() -> Iterator[AnyEvent]:
        nonlocal count
        for _, line in archive.read():
            count += 1
            yield decode(line)
    counters = recount(read())
    return Replay(counters, count)


def differences(replayed: dict[str, object], live: dict[str, object]) -> list[str]:
    """The measures whose values differ, in ``replayed``'s order."""
    return [k for k, v in replayed.items() if k not in ("scope", "from", "to")
            and live.get(k) != v]

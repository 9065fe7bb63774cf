"""The ``counters`` topic's record: one partial counter snapshot, written by the stream
worker (streams/worker.py) and read by ``motcua counters``, the displays and the tests.

Each record is the partial counter of one (scope, period) from ONE source partition,
stamped with that partition's position. Partitions hold disjoint subjects, so a figure is
the sum of the latest partial of every partition. "Latest" means the highest source
position, not the last record written: a worker that lost its partition in a rebalance may
publish once more after the new owner, and its older view must not win.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

import orjson

from schemas.counters import CounterKey, is_day
from schemas.figures import Figures, figures


@dataclass(frozen=True)
class Snapshot:
    scope: str
    period: str
    source: tuple[str, int]  # (source topic without the prefix, partition)
    next_offset: int  # the source partition's position the measures stand at
    measures: dict[str, int]
    worker: str = ""
    published_at: str = ""
    #: the newest event time (UTC, ISO 8601, ms) among the events that moved this partial
    #: since the key was last published ("" if unknown: a mark from an older worker)
    as_of: str = ""

    @property
    def key(self) -> str:
        """The record key: one partial per (scope, period, source partition)."""
        return f"{self.scope}|{self.period}|{self.source[0]}:{self.source[1]}"

    def encode(self) -> bytes:
        return orjson.dumps({
            "scope": self.scope, "period": self.period,
            "source": {"topic": self.source[0], "partition": self.source[1],
                       "next_offset": self.next_offset},
            "measures": self.measures, "worker": self.worker,
            "published_at": self.published_at, "as_of": self.as_of or None})


def event_time(epoch_ms: int | None) -> str:
    """An event time as snapshots carry it: UTC, ISO 8601 to the millisecond, one format so
    that later times compare greater as strings ("" for None)."""
    if epoch_ms is None:
        return ""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")


def parse(value: bytes | None) -> Snapshot | None:
    """The snapshot in a record's value, or None for anything else (a reader must not fall
    over on a record it did not expect)."""
    if not value:
        return None
    try:
        body = orjson.loads(value)
        source = body["source"]
        return Snapshot(str(body["scope"]), str(body["period"]),
                        (str(source["topic"]), int(source["partition"])),
                        int(source["next_offset"]),
                        {str(k): int(v) for k, v in body["measures"].items()},
                        str(body.get("worker", "")), str(body.get("published_at", "")),
                        str(body.get("as_of") or ""))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def latest(records: Iterable[tuple[bytes | None, bytes | None]]) -> dict[str, Snapshot]:
    """The latest snapshot of every key among (key, value) records in topic order: the one
    at the highest source position, the later record on a tie."""
    kept: dict[str, Snapshot] = {}
    for key, value in records:
        snap = parse(value)
        if snap is None:
            continue
        name = key.decode() if key else ""
        old = kept.get(name)
        if old is None or snap.next_offset >= old.next_offset:
            kept[name] = snap
    return kept


def totals(snapshots: Mapping[str, Snapshot], *, days_only: bool = False
           ) -> dict[CounterKey, int]:
    """Every counter summed over source partitions: {(scope, period, measure): value}."""
    out: dict[CounterKey, int] = defaultdict(int)
    for snap in snapshots.values():
        if days_only and not is_day(snap.period):
            continue
        for measure, value in snap.measures.items():
            out[(snap.scope, snap.period, measure)] += value
    return {k: v for k, v in out.items() if v}


def scope_figures(snapshots: Mapping[str, Snapshot], scope: str, start: date, end: date
                  ) -> Figures:
    """A scope's figures for the days ``start``..``end``, from the day partials."""
    days: dict[tuple[str, str], int] = defaultdict(int)
    for snap in snapshots.values():
        if snap.scope == scope and is_day(snap.period):
            for measure, value in snap.measures.items():
                days[(snap.period, measure)] += value
    return figures(days, scope, start, end)

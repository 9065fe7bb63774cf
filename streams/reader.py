"""Reading figures back from the ``counters`` topic (``motcua counters``, displays, tests).

Each record is the partial counter of one (scope, period) from ONE source partition, stamped
with that partition's position. Partitions hold disjoint dossiers, so a figure is the sum of
the latest partial of every partition. "Latest" means the highest source position, not the
last record written: a worker that lost its partition in a rebalance may publish once more
after the new owner, and its older view must not win.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from schemas.counters import Figures, figures, is_day
from schemas.errors import MotcuaError


class TopicUnreadable(MotcuaError):
    """A topic is missing, or could not be read to its end in time."""


def read_to_end(kafka_config: dict[str, Any], topic: str, timeout: float = 30.0
                ) -> Iterator[ConsumerRecord]:
    """Every record of ``topic`` from the start to its end, without a consumer group. The
    end is the high watermark seen in fetch responses (the embedded broker's ListOffsets is
    too low: DESIGN.md "Known facts"); a partition whose high watermark is not known yet is
    not at its end."""
    consumer = KafkaConsumer(**kafka_config, group_id=None, enable_auto_commit=False,
                             auto_offset_reset="earliest", fetch_max_wait_ms=100)
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise TopicUnreadable(f"topic {topic!r} does not exist (run `motcua topics "
                                  "create` or `motcua up`)")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while True:
            for records in consumer.poll(timeout_ms=200, max_records=50_000).values():
                yield from records
            if all(_at_end(consumer, tp) for tp in tps):
                return
            if time.monotonic() > deadline:
                raise TopicUnreadable(f"could not read {topic} to its end in {timeout:g} s "
                                      "(is the broker up?)")
    finally:
        consumer.close()


@dataclass(frozen=True)
class Snapshot:
    scope: str
    period: str
    source: tuple[str, int]
    next_offset: int
    measures: dict[str, int]


def read_snapshots(kafka_config: dict[str, Any], topic: str, timeout: float = 30.0
                   ) -> dict[str, Snapshot]:
    """The latest snapshot of every key of the counters ``topic``."""
    latest: dict[str, Snapshot] = {}
    for rec in read_to_end(kafka_config, topic, timeout):
        snap = _parse(rec.value)
        if snap is None:
            continue
        key = rec.key.decode() if rec.key else ""
        kept = latest.get(key)
        if kept is None or snap.next_offset >= kept.next_offset:
            latest[key] = snap
    return latest


def _at_end(consumer: KafkaConsumer, tp: TopicPartition) -> bool:
    high = consumer.highwater(tp)
    return high is not None and consumer.position(tp) >= high


def _parse(value: bytes | None) -> Snapshot | None:
    if not value:
        return None
    try:
        body = orjson.loads(value)
        source = body["source"]
        return Snapshot(str(body["scope"]), str(body["period"]),
                        (str(source["topic"]), int(source["partition"])),
                        int(source["next_offset"]),
                        {str(k): int(v) for k, v in body["measures"].items()})
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None  # not a snapshot we wrote; a reader must not fall over on it


def totals(snapshots: dict[str, Snapshot], *, days_only: bool = False
           ) -> dict[tuple[str, str, str], int]:
    """Every counter summed over source partitions: {(scope, period, measure): value}."""
    out: dict[tuple[str, str, str], int] = defaultdict(int)
    for snap in snapshots.values():
        if days_only and not is_day(snap.period):
            continue
        for measure, value in snap.measures.items():
            out[(snap.scope, snap.period, measure)] += value
    return {k: v for k, v in out.items() if v}


def scope_figures(snapshots: dict[str, Snapshot], scope: str, start: date, end: date
                  ) -> Figures:
    days: dict[tuple[str, str], int] = defaultdict(int)
    for snap in snapshots.values():
        if snap.scope == scope and is_day(snap.period):
            for measure, value in snap.measures.items():
                days[(snap.period, measure)] += value
    return figures(days, scope, start, end)

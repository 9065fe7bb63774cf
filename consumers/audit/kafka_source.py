"""``--source kafka``: the audit read from the event topics themselves, to the end each
partition had when the audit began, and compared with the archive.

``verify_log`` names every record of ``dossier-events`` and ``hotline-events`` that is not
an intact event signed by its origin (a forgery on Kafka, garbage), by topic, partition and
offset; every fork or chain break among the rest, by origin and seq; and, with an archive,
where Kafka and the archive disagree:

* an event on Kafka the archive holds with another hash at its place (one of the two was
  rewritten);
* an event on Kafka below the archive's stored position that the archive does not hold (the
  archive lost it, or refused it: its reason is shown);
* an event the archive holds at a place Kafka still retains, which Kafka does not have
  (the log was rewritten, or the event came from elsewhere).

Kafka's retention may have dropped a prefix of the log: a chain that starts above seq 1 on
Kafka is not a problem there, the archive is what keeps history (docs/audit.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition
from sqlalchemy import select

from consumers.audit.store import Archive, events, refused
from consumers.audit.verify import Problem, bad_signatures
from infra.kafka_log import at_end, log_reader
from schemas.chain import DUPLICATE, Link, judge_in_order
from schemas.errors import MotcuaError
from schemas.events import AnyEvent
from schemas.integrity import KeyRegistry, checked_event
from schemas.topics import DOSSIER_EVENTS, HOTLINE_EVENTS


@dataclass(frozen=True)
class Record:
    topic: str  # without the prefix
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def where(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


def read_log(kafka_config: dict[str, Any], prefix: str = "", timeout: float = 60.0
             ) -> Iterator[Record]:
    """Every record of the event topics, from each partition's start to its high watermark
    when the read reaches it (taken from the fetch responses: ListOffsets is wrong on the
    embedded broker, DESIGN.md)."""
    consumer = log_reader(kafka_config, fetch_wait_ms=100)
    try:
        topics = [prefix + DOSSIER_EVENTS, prefix + HOTLINE_EVENTS]
        tps = [TopicPartition(t, p) for t in topics
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        if {tp.topic for tp in tps} != set(topics):
            raise MotcuaError(f"the topics {', '.join(topics)} are not all on the broker")
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        left = set(tps)
        idle = 0.0
        while left:
            polled = consumer.poll(timeout_ms=1000, max_records=20_000)
            idle = 0.0 if polled else idle + 1.0
            if idle >= timeout:
                raise MotcuaError(f"reading the event topics stalled for {timeout:.0f} s with "
                                  f"{len(left)} partitions short of their end")
            for tp, records in polled.items():
                for rec in records:
                    yield Record(tp.topic.removeprefix(prefix), tp.partition, rec.offset,
                                 rec.key, rec.value)
            for tp in list(left):
                if at_end(consumer, tp):
                    left.discard(tp)
                    consumer.pause(tp)
    finally:
        consumer.close()


@dataclass
class LogReport:
    records: int = 0
    events: list[AnyEvent] = field(default_factory=list)  # the intact ones, in log order
    problems: list[Problem] = field(default_factory=list)
    signatures_checked: int = 0
    compared: int = 0  # events compared with the archive


def verify_log(records: Iterator[Record], registry: KeyRegistry, signatures: str = "all",
               archive: Archive | None = None, workers: int | None = None) -> LogReport:
    """The checks of the module docstring; ``signatures``: ``all`` checks every event's
    (on every core), ``heads`` each origin's newest on the log."""
    report = LogReport()
    places: dict[str, Record] = {}  # by event id: a forgery may claim a real event's place
    for rec in records:
        report.records += 1
        try:
            event = checked_event(rec.key, rec.value, registry, signatures=False)
        except MotcuaError as exc:
            report.problems.append(Problem("", None, f"{rec.where}: {exc}"))
            continue
        report.events.append(event)
        places[event.event_id] = rec
    by_origin: dict[str, list[AnyEvent]] = defaultdict(list)
    for e in report.events:
        by_origin[e.origin].append(e)
    heads = [max(chain, key=lambda e: e.origin_seq) for chain in by_origin.values()]
    checked = heads if signatures == "heads" else report.events
    bad = bad_signatures(checked, registry, workers)
    report.signatures_checked = len(checked)
    for e, reason in bad:
        report.problems.append(Problem(e.origin, e.origin_seq,
                                       f"{places[e.event_id].where}: {reason}"))
    forged = {e.event_id for e, _ in bad}
    report.events = [e for e in report.events if e.event_id not in forged]
    held: dict[tuple[str, int], Link] = {}
    ids: set[str] = set()
    at: dict[tuple[str, int], Record] = {}
    kept = []
    for e, verdict in judge_in_order(report.events, lambda e: e, held, ids):
        if verdict is None:
            at[(e.origin, e.origin_seq)] = places[e.event_id]
            kept.append(e)
        elif verdict != DUPLICATE:
            report.problems.append(Problem(e.origin, e.origin_seq,
                                           f"{places[e.event_id].where}: {verdict}"))
    report.events = kept  # each place once: what a reader of the log counts
    if archive is not None:
        _compare(report, held, at, archive)
    report.problems.sort(key=lambda p: (p.origin, p.seq or 0, p.reason))
    return report


def _compare(report: LogReport, held: dict[tuple[str, int], Link],
             places: dict[tuple[str, int], Record], archive: Archive) -> None:
    stored = archive.positions()
    e = events.c
    lows: dict[str, int] = {}
    highs: dict[str, int] = {}
    for origin, seq in held:
        lows[origin] = min(lows.get(origin, seq), seq)
        highs[origin] = max(highs.get(origin, seq), seq)
    with archive.engine.connect() as conn:
        archived = {(r.origin, int(r.origin_seq)): r.hash for r in conn.execute(
            select(e.origin, e.origin_seq, e.hash))}
        why = {(r.topic, int(r.partition), int(r.offset)): r.reason for r in conn.execute(
            select(refused.c.topic, refused.c.partition, refused.c.offset, refused.c.reason))}
    for place, link in sorted(held.items()):
        report.compared += 1
        rec = places[place]
        there = archived.get(place)
        if there is not None and there != link.hash:
            report.problems.append(Problem(*place, f"{rec.where} is {link.hash[:12]}…, the "
                                           f"archive holds {there[:12]}… (one of the two "
                                           "was rewritten)"))
        elif there is None and rec.offset < stored.get((rec.topic, rec.partition), 0):
            reason = why.get((rec.topic, rec.partition, rec.offset))
            report.problems.append(Problem(*place, f"{rec.where}: on Kafka, not in the "
                                           "archive although it read past it"
                                           + (f" (refused: {reason})" if reason else "")))
    for (origin, seq), _hash in sorted(archived.items()):
        if origin in lows and lows[origin] <= seq <= highs[origin] \
                and (origin, seq) not in held:
            report.problems.append(Problem(origin, seq, "in the archive, not on Kafka where "
                                           "the log still holds its origin's chain"))

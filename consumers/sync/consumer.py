"""The sync consumer of one node's replica (``motcua sync --node ID``): Kafka in, rows out.

kafka-python, with every partition of ``dossier-events`` and ``hotline-events`` assigned by
hand: a node needs all of them (a commune's dossiers hash to any partition, and an origin's
chain runs across both topics), so a consumer group would only add rebalances. Each start
seeks every partition to the position the replica stored with its rows; Kafka's committed
offsets play no part, and none are written.

Each poll is checked record by record (schema, hash, signature, known origin, record key =
dossier id); the replica then refuses forks and chain breaks (``consumers.sync.replica``). Every
rejected record is written to ``dead-letters`` with its reason, inside the transaction that
moves the positions past it and before that transaction commits: a crash in between writes
the dead letter again on restart (at least once), never loses it. Valid events behind a
rejected one are applied in the same transaction (G5).

A failure to apply (database down, dead letters not acknowledged) rolls the transaction
back; the consumer records the error for ``sync status``, waits, seeks back to the stored
positions and tries again. A record the database itself refuses (a value it cannot store)
would fail every retry: the poll is then applied record by record, and that record goes to
dead-letters. On start, the record below each stored position must be one the replica
holds; a partition whose log is not the one the positions came from is read again from 0.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from consumers.sync.replica import DATA_ERRORS, STORE_ERRORS, Applied, Refusal, Replica
from infra.kafka_log import PollLag, log_reader
from infra.metrics import Metrics
from schemas.deadletter import DeadLetter
from schemas.errors import MotcuaError
from schemas.events import AnyEvent
from schemas.integrity import KeyRegistry, checked_event
from schemas.topics import DEAD_LETTERS, DOSSIER_EVENTS, HOTLINE_EVENTS

log = logging.getLogger("motcua.sync")

SOURCE_TOPICS = (DOSSIER_EVENTS, HOTLINE_EVENTS)
RETRY_SECONDS = 2.0
HEARTBEAT_SECONDS = 5.0


class SyncConsumer:
    def __init__(self, replica: Replica, kafka_config: dict[str, Any], registry: KeyRegistry,
                 *, prefix: str = "", max_records: int = 2000,
                 fetch_wait_ms: int = 100, metrics: Metrics | None = None) -> None:
        self.replica = replica
        self.metrics = metrics or Metrics(f"sync-{replica.node}")
        self.kafka_config = kafka_config
        self.registry = registry
        self.node = replica.node
        self.topics = tuple(prefix + t for t in SOURCE_TOPICS)
        self.dead_topic = prefix + DEAD_LETTERS
        self.max_records = max_records
        self.fetch_wait_ms = fetch_wait_ms
        self.applied = Applied()  # since this consumer started
        self.dead = 0
        self.polls = 0
        self.last_error: str | None = None
        self._next: dict[TopicPartition, int] = {}  # where the next record should be
        self._lag = PollLag()

    def run(self, stop: threading.Event) -> None:
        """Apply the topics to the replica until ``stop`` is set."""
        consumer = log_reader(self.kafka_config, self.fetch_wait_ms)
        producer = KafkaProducer(**self.kafka_config, acks="all", linger_ms=5)
        try:
            tps = self._assign(consumer, stop)
            while not stop.is_set():
                try:
                    self._check_positions(consumer, tps, stop)
                    break
                except (*STORE_ERRORS, KafkaError, OSError) as exc:
                    self._failed(_describe(exc))
                    stop.wait(RETRY_SECONDS)
                finally:
                    consumer.resume(*tps)
            self._seek_to_stored(consumer, tps, stop)
            beat = time.monotonic()
            while not stop.is_set():
                try:
                    polled = consumer.poll(timeout_ms=200, max_records=self.max_records)
                    self.polls += 1
                    self.metrics.read(sum(len(r) for r in polled.values()))
                    self.metrics.lag(*self._lag.after(consumer, polled, time.time()))
                    if not polled:
                        if time.monotonic() - beat > HEARTBEAT_SECONDS:
                            if self._safely(self.replica.note):
                                self.last_error = None  # caught up: as `sync status` says
                            beat = time.monotonic()
                        continue
                    began = time.monotonic()
                    try:
                        self._apply(polled, producer)
                    except DATA_ERRORS:  # a record the database refuses: find it
                        self._apply_one_by_one(polled, producer)
                    self.metrics.batch_seconds.observe(time.monotonic() - began)
                    beat = time.monotonic()
                except (*STORE_ERRORS, KafkaError, OSError, StoreRefusesAll) as exc:
                    self._failed(_describe(exc))
                    stop.wait(RETRY_SECONDS)
                    self._seek_to_stored(consumer, tps, stop)  # what was polled comes again
        finally:
            producer.close(5)
            consumer.close()

    def _assign(self, consumer: KafkaConsumer, stop: threading.Event) -> list[TopicPartition]:
        while True:
            found = {t: consumer.partitions_for_topic(t) for t in self.topics}
            if all(found.values()) or stop.is_set():
                break
            self._failed(f"waiting for topics {', '.join(t for t, p in found.items() if not p)}"
                         " (run `motcua topics create`)")
            stop.wait(RETRY_SECONDS)
        tps = [TopicPartition(t, p) for t, parts in found.items() for p in sorted(parts or ())]
        consumer.assign(tps)
        return tps

    def _stored(self, stop: threading.Event) -> dict[tuple[str, int], int]:
        while True:
            try:
                return self.replica.positions()
            except STORE_ERRORS as exc:
                self._failed(_describe(exc))
                if stop.wait(RETRY_SECONDS):
                    return {}

    def _seek_to_stored(self, consumer: KafkaConsumer, tps: Sequence[TopicPartition],
                        stop: threading.Event) -> None:
        stored = self._stored(stop)
        for tp in tps:
            self._next[tp] = stored.get((tp.topic, tp.partition), 0)
            consumer.seek(tp, self._next[tp])

    def _check_positions(self, consumer: KafkaConsumer, tps: Sequence[TopicPartition],
                         stop: threading.Event, timeout: float = 30.0) -> None:
        """Stored positions are offsets in one particular log: the record just below each
        must be the one applied there (same sha256). If it is not (the topics were
        recreated, an in-memory broker restarted, the log no longer reaches that far), the
        partition is read again from its start: duplicates cost little, skipped records
        cost events."""
        stored = self.replica.positions_with_digests()  # errors: the caller retries
        probe = {tp: stored[(tp.topic, tp.partition)][0] - 1 for tp in tps
                 if (tp.topic, tp.partition) in stored
                 and stored[(tp.topic, tp.partition)][0] > 0
                 and stored[(tp.topic, tp.partition)][1]}
        if not probe:
            return
        consumer.pause(*[tp for tp in tps if tp not in probe])
        found = first_records(consumer, probe, time.monotonic() + timeout, stop)
        if len(found) < len(probe):
            log.warning("%s: could not check %d stored positions in %g s; trusting them",
                        self.node, len(probe) - len(found), timeout)
        for tp, rec in found.items():
            if rec is not None and rec.offset > probe[tp]:
                continue  # retention took the record below: the main loop reports a loss
            if rec is not None and _digest(rec.value) == stored[(tp.topic, tp.partition)][1]:
                continue
            where = "ends before" if rec is None else "holds another record at"
            self._failed(f"{tp.topic}[{tp.partition}]: the log {where} offset {probe[tp]} "
                         "than this replica applied (another log?); reading the partition "
                         "again from its start")
            self.replica.forget_position(tp.topic, tp.partition)

    def _apply(self, polled: dict[TopicPartition, list[Any]], producer: KafkaProducer,
               unstorable: str | None = None) -> None:
        events: list[AnyEvent] = []
        source: dict[int, tuple[TopicPartition, Any]] = {}  # id(event) -> its record
        rejected: list[DeadLetter] = []
        moved: dict[tuple[str, int], int] = {}
        digests: dict[tuple[str, int], str] = {}
        for tp, records in polled.items():
            if records:
                digests[(tp.topic, tp.partition)] = _digest(records[-1].value)
            if records and records[0].offset > self._next.get(tp, 0):
                self._failed(f"{tp.topic}[{tp.partition}]: offsets {self._next.get(tp, 0)}-"
                             f"{records[0].offset - 1} are gone from the log (retention?) "
                             "and were never applied")
            for rec in records:
                moved[(tp.topic, tp.partition)] = rec.offset + 1
                if unstorable is not None:  # the one record the database refused
                    rejected.append(self._letter(unstorable, tp, rec))
                    continue
                try:
                    event = checked_event(rec.key, rec.value, self.registry)
                except MotcuaError as exc:
                    rejected.append(self._letter(str(exc), tp, rec, exc))
                    continue
                events.append(event)
                source[id(event)] = (tp, rec)

        def write_dead_letters(refusals: Sequence[Refusal]) -> None:
            letters = rejected + [self._letter(r.reason, *source[id(r.event)])
                                  for r in refusals]
            sent = []
            for letter in letters:
                key, value = letter.record()
                sent.append(producer.send(self.dead_topic, key=key, value=value))
            if letters:
                producer.flush(30)
                for future in sent:  # flush() only logs a failed send: ask each one
                    future.get(timeout=0)
                for letter in letters:
                    log.warning("%s: rejected %s[%d]@%d: %s", self.node, letter.source_topic,
                                letter.partition, letter.offset, letter.reason)

        began = time.monotonic()
        result = self.replica.apply(events, moved, digests=digests,
                                    dead_letters=len(rejected),
                                    before_commit=write_dead_letters)
        self.metrics.commit_seconds.observe(time.monotonic() - began)
        self.metrics.wrote(len(events) - len(result.refused))
        for reason in [r.reason for r in rejected] + [r.reason for r in result.refused]:
            self.metrics.dead(reason)
        for tp in polled:
            self._next[tp] = moved.get((tp.topic, tp.partition), self._next.get(tp, 0))
        self.applied.add(result)
        self.dead += len(rejected) + len(result.refused)
        # the last error lasts until the next batch commits (replica.error_is_current)
        self.last_error = (f"rejected: {rejected[-1].reason}" if rejected else
                           f"refused: {result.refused[-1].reason}" if result.refused else None)
        if rejected:
            self._safely(self.replica.note, self.last_error)

    def _apply_one_by_one(self, polled: dict[TopicPartition, list[Any]],
                          producer: KafkaProducer) -> None:
        """The database refused the poll as a whole: apply it record by record, and send the
        record it refuses to dead-letters (with the database's reason), so nothing valid
        behind it waits (G5). If the record after it is refused too (tried in a transaction
        rolled back), the fault is the database's, not the records': nothing is
        dead-lettered, and the poll is retried and reported like any store failure."""
        records = [(tp, rec) for tp, recs in polled.items() for rec in recs]
        for i, (tp, rec) in enumerate(records):
            try:
                self._apply({tp: [rec]}, producer)
            except DATA_ERRORS as exc:
                if i + 1 < len(records) and self._refused(*records[i + 1]):
                    raise StoreRefusesAll(f"the replica's database refuses consecutive "
                                          f"records (the replica's database refuses it: "
                                          f"{_describe(exc)})") from None
                self._apply({tp: [rec]}, producer,
                            unstorable=f"the replica's database refuses it: {_describe(exc)}")

    def _refused(self, tp: TopicPartition, rec: Any) -> bool:
        """Whether the database refuses this record's event (a dry run)."""
        try:
            event = checked_event(rec.key, rec.value, self.registry)
        except MotcuaError:
            return False  # not an event: a dead letter anyway, says nothing of the store
        try:
            self.replica.apply([event], dry_run=True)
        except DATA_ERRORS:
            return True
        return False

    def _letter(self, reason: str, tp: TopicPartition, rec: Any,
                exc: MotcuaError | None = None) -> DeadLetter:
        where = {"source_topic": tp.topic, "partition": tp.partition, "offset": rec.offset,
                 "key": rec.key, "value": rec.value, "stage": f"sync:{self.node}"}
        if exc is not None:
            return DeadLetter.of(exc, **where)
        return DeadLetter(reason, **where)

    def _failed(self, error: str) -> None:
        self.metrics.error(error)
        self.last_error = error
        log.warning("%s: %s", self.node, error)
        self._safely(self.replica.note, error)

    @staticmethod
    def _safely(call: Any, *args: Any) -> bool:
        try:
            call(*args)
        except STORE_ERRORS:
            return False  # the database is what failed; the error is logged and retried
        return True


def first_records(consumer: KafkaConsumer, starts: dict[TopicPartition, int],
                  deadline: float, stop: threading.Event | None = None
                  ) -> dict[TopicPartition, Any | None]:
    """For each assigned partition of ``starts``: its first record at or after the start
    offset, or None if the log ends before it. The end is the high watermark seen in fetch
    responses (ListOffsets is too low on the embedded broker: DESIGN.md "Known facts").
    Partitions not known by ``deadline`` (or a stop) are left out. Each partition is
    paused once known: the caller resumes and seeks."""
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    found: dict[TopicPartition, Any | None] = {}
    while len(found) < len(starts) and time.monotonic() < deadline and not (
            stop is not None and stop.is_set()):
        for tp, records in consumer.poll(timeout_ms=200, max_records=500).items():
            if tp in starts and tp not in found and records:
                # a record below the start: the position was out of range, reset to the
                # log's start, so the log ends before it
                found[tp] = records[0] if records[0].offset >= starts[tp] else None
                consumer.pause(tp)
        for tp, offset in starts.items():
            high = consumer.highwater(tp)
            if tp not in found and high is not None and high <= offset:
                found[tp] = None
                consumer.pause(tp)
    return found


class StoreRefusesAll(MotcuaError):
    """The replica's database refuses records one after another: its fault, not theirs."""


def _describe(exc: BaseException) -> str:
    """One line for logs and ``sync status``: the error's type and first line."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _digest(value: bytes | None) -> str:
    return hashlib.sha256(value or b"").hexdigest()


class Lag:
    """How far a replica is behind the log: records not applied yet, and the age of the
    oldest of them (its Kafka timestamp is the send time: DESIGN.md "Topics")."""

    def __init__(self, events: int, oldest_ms: int | None,
                 beyond: Sequence[str] = ()) -> None:
        self.events = events
        self.oldest_ms = oldest_ms
        self.beyond = list(beyond)  # partitions whose stored position is past the log end

    def seconds(self, now: float | None = None) -> float:
        if self.oldest_ms is None:
            return 0.0
        return max(0.0, (now if now is not None else time.time()) - self.oldest_ms / 1000)


def lag_of(kafka_config: dict[str, Any], topics: Sequence[str],
           stored: dict[tuple[str, int], int], timeout: float = 15.0) -> Lag:
    """The lag of a replica whose positions are ``stored``. The log end is the high
    watermark of fetch responses, not ListOffsets (too low on the embedded broker: DESIGN.md
    "Known facts"), so every partition is fetched from the replica's position."""
    consumer = log_reader(kafka_config)
    try:
        tps = [TopicPartition(t, p) for t in topics
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        if not tps:
            raise MotcuaError(f"topics {', '.join(topics)} do not exist (run `motcua topics "
                              "create` or `motcua up`)")
        consumer.assign(tps)
        starts = {tp: stored.get((tp.topic, tp.partition), 0) for tp in tps}
        first = first_records(consumer, starts, time.monotonic() + timeout)
        if len(first) < len(tps):
            raise MotcuaError(f"could not read the log end of {', '.join(topics)} in "
                              f"{timeout:g} s (is the broker up?)")
        high = {tp: consumer.highwater(tp) or 0 for tp in tps}
        beyond = [tp for tp in tps if starts[tp] > high[tp]]
        behind = sum(max(0, high[tp] - starts[tp]) for tp in tps)
        oldest = [rec.timestamp for rec in first.values() if rec is not None]
        return Lag(behind, min(oldest) if oldest else None,
                   [f"{tp.topic}[{tp.partition}]" for tp in beyond])
    finally:
        consumer.close()

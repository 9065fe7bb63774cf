"""``motcua archive``: every verified event of ``dossier-events`` and ``hotline-events`` into
the audit archive (``consumers.audit.store``), exactly once.

kafka-python with every partition assigned by hand (an archive needs all of them), read
from the positions the archive committed with its data; Kafka's committed offsets play no
part. Each record is checked as every consumer checks it (schema, hash, signature of its
origin, record key: ``schemas.integrity.checked_event``), then against its origin's chain
(``schemas.chain.judge``, in (origin, seq) order, as the stream worker and sync judge it).
What is refused is noted in the archive's index with the reason (``archive_refused``);
the stream worker and sync already put such records on ``dead-letters``, so the archive
does not send a third copy.

A failure (disk, index, broker) leaves the batch uncommitted: the consumer waits, seeks
back to the committed positions and tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from nacl.signing import SigningKey
from sqlalchemy.exc import SQLAlchemyError

from consumers.audit.store import Accepted, Archive, Refused
from infra.kafka_log import log_reader
from schemas.chain import DUPLICATE, Link, judge
from schemas.errors import MotcuaError
from schemas.events import LOCAL_TZ
from schemas.integrity import KeyRegistry, checked_event
from schemas.topics import CHECKPOINTS, DOSSIER_EVENTS, HOTLINE_EVENTS

log = logging.getLogger("motcua.archive")

SOURCE_TOPICS = (DOSSIER_EVENTS, HOTLINE_EVENTS)
RETRY_SECONDS = 2.0


@dataclass(frozen=True)
class Signer:
    """The site this archive signs checkpoints for, under ``name`` with ``key``."""
    name: str
    key: SigningKey
    every: float = 60.0  # seconds between checkpoints (also one when the local day ends)


def checkpoint_name(site: str) -> str:
    """The origin line (and key name) of a site's checkpoints."""
    return f"hungyen.motcua/{site}"


class ArchiveConsumer:
    def __init__(self, archive: Archive, kafka_config: dict[str, Any], registry: KeyRegistry,
                 *, prefix: str = "", max_records: int = 5000,
                 fetch_wait_ms: int = 100, signer: Signer | None = None) -> None:
        self.archive = archive
        self.signer = signer
        self.checkpoints = 0
        self._last_checkpoint = (time.monotonic(), datetime.now(LOCAL_TZ).date())
        self.kafka_config = kafka_config
        self.registry = registry
        self.topics = tuple(prefix + t for t in SOURCE_TOPICS)
        self.checkpoint_topic = prefix + CHECKPOINTS
        self.prefix = prefix
        self.max_records = max_records
        self.fetch_wait_ms = fetch_wait_ms
        self.archived = 0  # since this consumer started
        self.refused = 0
        self.last_error: str | None = None

    def run(self, stop: threading.Event) -> None:
        """Archive until ``stop`` is set."""
        consumer = log_reader(self.kafka_config, self.fetch_wait_ms)
        producer = KafkaProducer(**self.kafka_config, acks="all") if self.signer else None
        try:
            tps = self._assign(consumer, stop)
            self._seek_to_committed(consumer, tps)
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=500, max_records=self.max_records)
                try:
                    if polled:
                        self._archive(polled)
                    if producer is not None:
                        self._checkpoint_if_due(producer)
                except (SQLAlchemyError, OSError, KafkaError) as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("archive: %s; retrying from the committed positions in "
                                "%.0f s", self.last_error, RETRY_SECONDS)
                    stop.wait(RETRY_SECONDS)
                    self._seek_to_committed(consumer, tps)
        finally:
            consumer.close()
            if producer is not None:
                producer.close(5)

    def _checkpoint_if_due(self, producer: KafkaProducer, force: bool = False) -> None:
        """Every ``signer.every`` seconds, and when the local day changed: sign a
        checkpoint of the archive (if it grew) and publish it on ``checkpoints``."""
        assert self.signer is not None
        now, today = time.monotonic(), datetime.now(LOCAL_TZ).date()
        last_at, last_day = self._last_checkpoint
        if not force and now - last_at < self.signer.every and today == last_day:
            return
        note = self.archive.checkpoint(self.signer.name, self.signer.key,
                                       datetime.now(UTC).isoformat(timespec="seconds"))
        self._last_checkpoint = (now, today)
        if note is None:
            return
        # stored first, then published: a crash in between loses only this publication,
        # and the next checkpoint (each covers the whole tree) supersedes it
        producer.send(self.checkpoint_topic, key=self.signer.name.encode(),
                      value=note.encode().encode()).get(timeout=30)
        self.checkpoints += 1

    def _assign(self, consumer: KafkaConsumer, stop: threading.Event) -> list[TopicPartition]:
        delay = 0.5
        while not stop.is_set():
            try:
                tps = [TopicPartition(t, p) for t in self.topics
                       for p in sorted(consumer.partitions_for_topic(t) or ())]
            except KafkaError as exc:
                tps, self.last_error = [], f"{type(exc).__name__}: {exc}"
            if tps and {tp.topic for tp in tps} == set(self.topics):
                consumer.assign(tps)
                return tps
            stop.wait(delay)
            delay = min(delay * 2, 5.0)
        return []

    def _seek_to_committed(self, consumer: KafkaConsumer, tps: list[TopicPartition]) -> None:
        stored = self.archive.positions()
        for tp in tps:
            consumer.seek(tp, stored.get((tp.topic, tp.partition), 0))

    def _archive(self, polled: dict[TopicPartition, list[Any]]) -> None:
        checked: list[Accepted] = []
        refusals: list[Refused] = []
        moves: dict[tuple[str, int], int] = {}
        for tp, records in polled.items():
            for rec in records:
                moves[(tp.topic, tp.partition)] = rec.offset + 1
                topic = tp.topic.removeprefix(self.prefix)
                try:
                    event = checked_event(rec.key, rec.value, self.registry)
                except MotcuaError as exc:
                    refusals.append(Refused(topic, tp.partition, rec.offset, str(exc),
                                            rec.value))
                    continue
                checked.append(Accepted(topic, tp.partition, rec.offset, rec.value, event))
        accepted = []
        held, ids = self.archive.chain_around([a.event for a in checked])
        for a in sorted(checked, key=lambda a: (a.event.origin, a.event.origin_seq)):
            verdict = judge(a.event, held, ids)
            if verdict is None:
                held[(a.event.origin, a.event.origin_seq)] = Link(a.event.hash,
                                                                  a.event.prev_hash)
                ids.add(a.event.event_id)
                accepted.append(a)
            elif verdict != DUPLICATE:
                refusals.append(Refused(a.topic, a.partition, a.offset, verdict, a.value))
        # in the order Kafka gave them, so a segment reads in arrival order
        accepted.sort(key=lambda a: (a.topic, a.partition, a.offset))
        self.archive.append(accepted, refusals, moves)
        self.archived += len(accepted)
        self.refused += len(refusals)
        for r in refusals:
            log.warning("archive: refused %s[%d]@%d: %s", r.topic, r.partition, r.offset,
                        r.reason)
        if refusals:
            self.last_error = f"refused: {refusals[-1].reason}"


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
from consumers.audit.witness import COSIGNED, REFUSED, WAIT, Witness, site_of
from infra.kafka_log import PollLag, log_reader
from infra.metrics import Metrics
from schemas.chain import DUPLICATE, judge_in_order
from schemas.errors import MotcuaError
from schemas.events import LOCAL_TZ
from schemas.integrity import KeyRegistry, checked_event
from schemas.note import COSIGNATURE_V1, Checkpoint, Note, NoteError, Verifier
from schemas.note import verify as verify_note
from schemas.topics import CHECKPOINTS, DOSSIER_EVENTS, HOTLINE_EVENTS

log = logging.getLogger("motcua.archive")

SOURCE_TOPICS = (DOSSIER_EVENTS, HOTLINE_EVENTS)
RETRY_SECONDS = 2.0
WITNESS_EVERY = 1.0  # seconds between two tries of the checkpoints that wait
MAX_WAITING = 10_000  # checkpoints kept waiting per signer (one a minute: a week)


@dataclass(frozen=True)
class Signer:
    """The site this archive signs checkpoints for, under ``name`` with ``key``."""
    name: str
    key: SigningKey
    every: float = 60.0  # seconds between checkpoints (also one when the local day ends)
    audit_keys: KeyRegistry | None = None  # the sites' checkpoint keys: to witness the others


class ArchiveConsumer:
    def __init__(self, archive: Archive, kafka_config: dict[str, Any], registry: KeyRegistry,
                 *, prefix: str = "", max_records: int = 5000,
                 fetch_wait_ms: int = 100, signer: Signer | None = None,
                 metrics: Metrics | None = None) -> None:
        self.archive = archive
        self.metrics = metrics or Metrics("archive")
        self._lag = PollLag()
        self.signer = signer
        self.checkpoints = 0
        self.witness = (Witness(archive, signer.name, signer.key, signer.audit_keys)
                        if signer is not None and signer.audit_keys is not None else None)
        self.cosigned = 0  # others' checkpoints this site cosigned, since it started
        self.cosignatures = 0  # cosignatures of this site's checkpoints received
        self.witness_refused = 0
        self.waiting: dict[str, dict[int, str]] = {}  # signer -> size -> note, to try again
        self._witnessed_at = 0.0
        self._told: dict[str, str] = {}
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
        notes = log_reader(self.kafka_config, self.fetch_wait_ms) if self.signer else None
        try:
            tps = self._assign(consumer, stop, self.topics)
            self._seek_to_committed(consumer, tps)
            if notes is not None and producer is not None:
                self._assign(notes, stop, (self.checkpoint_topic,))
                try:
                    self._publish_again(producer)
                except KafkaError as exc:  # the next checkpoints and cosignatures carry on
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("archive: could not publish again what may have been lost: "
                                "%s", self.last_error)
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=500, max_records=self.max_records)
                self.metrics.read(sum(len(r) for r in polled.values()))
                self.metrics.lag(*self._lag.after(consumer, polled, time.time()))
                try:
                    if polled:
                        began = time.monotonic()
                        self._archive(polled)
                        self.metrics.batch_seconds.observe(time.monotonic() - began)
                    if producer is not None and notes is not None:
                        self._checkpoint_if_due(producer)
                        self._read_notes(notes, producer)
                except (SQLAlchemyError, OSError, KafkaError) as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    self.metrics.error(self.last_error)
                    log.warning("archive: %s; retrying from the committed positions in "
                                "%.0f s", self.last_error, RETRY_SECONDS)
                    stop.wait(RETRY_SECONDS)
                    self._seek_to_committed(consumer, tps)
        finally:
            consumer.close()
            if notes is not None:
                notes.close()
            if producer is not None:
                producer.close(5)

    def _publish_again(self, producer: KafkaProducer) -> None:
        """At start: this site's checkpoints no witness cosigned yet (a crash, or a fresh
        broker, may have lost them; a witness must see every one, in order), and the last
        checkpoint this site cosigned for each other site (the signer may have missed it)."""
        assert self.signer is not None
        cosigned = max((size for size, _, _ in self.archive.cosigned()), default=0)
        for size, _root, note in self.archive.issued():
            if size > cosigned:
                producer.send(self.checkpoint_topic, key=self.signer.name.encode(),
                              value=note.encode())
        last: dict[str, str] = {}
        for signer, _size, _root, note in self.archive.witnessed_notes():
            last[signer] = note
        for note in last.values():
            producer.send(self.checkpoint_topic, key=self.signer.name.encode(),
                          value=note.encode())
        producer.flush(30)

    def _read_notes(self, notes: KafkaConsumer, producer: KafkaProducer) -> None:
        """The checkpoints topic: cosignatures of this site's checkpoints are kept; the
        other sites' checkpoints are witnessed (those that must wait, tried again)."""
        assert self.signer is not None
        for records in notes.poll(timeout_ms=0, max_records=500).values():
            for rec in records:
                data = rec.value.decode("utf-8", "replace") if rec.value else ""
                try:
                    note = Note.parse(data)
                    cp = Checkpoint.parse(note.text)
                except NoteError as exc:
                    log.warning("archive: checkpoints@%d is not a checkpoint: %s", rec.offset,
                                exc)
                    continue
                if cp.origin == self.signer.name:
                    self._keep_cosignatures(note, cp.size)
                elif self.witness is not None and all(
                        s.name != self.signer.name for s in note.signatures):
                    waiting = self.waiting.setdefault(cp.origin, {})
                    if len(waiting) < MAX_WAITING:
                        waiting[cp.size] = data
        if self.waiting and time.monotonic() - self._witnessed_at >= WITNESS_EVERY:
            self._witnessed_at = time.monotonic()
            for signer, waiting in self.waiting.items():
                self._witness(signer, waiting, producer)

    def _witness(self, signer: str, waiting: dict[int, str], producer: KafkaProducer) -> None:
        """Try the signer's waiting checkpoints smallest first, each on the last cosigned:
        the tree's order depends on every checkpoint, so none may be skipped."""
        assert self.witness is not None and self.signer is not None
        for size in sorted(waiting):
            verdict = self.witness.check(waiting[size])
            if verdict.outcome == WAIT:
                if self._told.get(signer) != verdict.reason:  # once per reason, not per try
                    self._told[signer] = verdict.reason
                    log.info("archive: %s checkpoint %d waits: %s", signer, size,
                             verdict.reason)
                return
            del waiting[size]
            if verdict.outcome == COSIGNED:
                assert verdict.note is not None
                producer.send(self.checkpoint_topic, key=self.signer.name.encode(),
                              value=verdict.note.encode()).get(timeout=30)
                self.cosigned += 1
            elif verdict.outcome == REFUSED:
                self.witness_refused += 1
                self.last_error = f"refused to cosign {signer} {size}: {verdict.reason}"
                log.error("archive: REFUSED to cosign %s checkpoint %d: %s", signer, size,
                          verdict.reason)

    def _keep_cosignatures(self, note: Note, size: int) -> None:
        """Another site's cosignature of this site's checkpoint of ``size``, once it holds."""
        assert self.signer is not None and self.signer.audit_keys is not None
        issued = self.archive.issued_note(size)
        if issued is None or Note.parse(issued).text != note.text:
            log.warning("archive: a cosigned checkpoint %d that this site never issued",
                        size)
            return
        for sig in note.signatures:
            public = self.signer.audit_keys.get(site_of(sig.name))
            if sig.name == self.signer.name or public is None:
                continue
            try:
                verify_note(note, Verifier(sig.name, COSIGNATURE_V1, bytes(public)))
            except NoteError as exc:
                log.warning("archive: cosignature of checkpoint %d: %s", size, exc)
                continue
            self.archive.add_cosignature(size, sig.name, note.encode())
            self.cosignatures += 1

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
        self.metrics.snapshot()  # signed, or nothing new to sign: the checkpoint is current
        if note is None:
            return
        # stored first, then published: a crash in between loses only this publication,
        # and the next checkpoint (each covers the whole tree) supersedes it
        producer.send(self.checkpoint_topic, key=self.signer.name.encode(),
                      value=note.encode().encode()).get(timeout=30)
        self.checkpoints += 1

    def _assign(self, consumer: KafkaConsumer, stop: threading.Event,
                topics: tuple[str, ...]) -> list[TopicPartition]:
        delay = 0.5
        while not stop.is_set():
            try:
                tps = [TopicPartition(t, p) for t in topics
                       for p in sorted(consumer.partitions_for_topic(t) or ())]
            except KafkaError as exc:
                tps, self.last_error = [], f"{type(exc).__name__}: {exc}"
            if tps and {tp.topic for tp in tps} == set(topics):
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
        for a, verdict in judge_in_order(checked, lambda a: a.event, held, ids):
            if verdict is None:
                accepted.append(a)
            elif verdict != DUPLICATE:
                refusals.append(Refused(a.topic, a.partition, a.offset, verdict, a.value))
        # in the order Kafka gave them, so a segment reads in arrival order
        accepted.sort(key=lambda a: (a.topic, a.partition, a.offset))
        began = time.monotonic()
        self.archive.append(accepted, refusals, moves)
        self.metrics.commit_seconds.observe(time.monotonic() - began)
        self.metrics.wrote(len(accepted))
        for r in refusals:
            self.metrics.dead(r.reason)
        self.archived += len(accepted)
        self.refused += len(refusals)
        for r in refusals:
            log.warning("archive: refused %s[%d]@%d: %s", r.topic, r.partition, r.offset,
                        r.reason)
        if refusals:
            self.last_error = f"refused: {refusals[-1].reason}"


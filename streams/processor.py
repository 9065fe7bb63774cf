"""The stream worker's engine, free of faust: a batch of source records in, counters out.
It decodes, verifies and chains here; the fold is ``streams.projector`` (memory only), the
writes ``streams.store`` (SQL only).

``prepare()`` decodes, verifies and folds a batch in memory and says which records must be
dead-lettered; the caller publishes those (and waits for the acknowledgement); ``commit()``
then writes subjects, counter deltas, snapshot marks and the new source positions in ONE
transaction. Exactness rests on that transaction, not on any changelog: after a crash the
store holds the fold of exactly the records before its positions, and records below a
position are skipped when they come again (docs/streams.md).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Engine

from schemas.calls import is_call_event
from schemas.chain import DUPLICATE, judge_in_order
from schemas.counters import CounterKey
from schemas.deadletter import DeadLetter
from schemas.errors import MotcuaError
from schemas.events import AnyEvent
from schemas.integrity import KeyRegistry, check_signature, checked_event
from streams.projector import CALLS, DOSSIERS, Projector, Subject
from streams.store import TP, PositionConflict, StreamStore, open_store

__all__ = ["CALLS", "DOSSIERS", "TP", "Batch", "PositionConflict", "Processor", "Record",
           "Source", "Started", "open_store"]

#: Events per signature job: big enough that a job's overhead is nothing, small enough that
#: the verifier starts while the batch is still being decoded.
SIGNATURE_CHUNK = 128

class Source(Protocol):
    """A source record as the processor reads it: aiokafka's ConsumerRecord as it comes
    (no copy per record), or a ``Record``."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


Signing = list[tuple[list[tuple[Source, AnyEvent]], Future[list[MotcuaError | None]]]]


@dataclass
class Started:
    """A batch begun (``Processor.begin``): decoded, its signatures being checked."""
    batch: Batch
    accepted: list[tuple[Source, AnyEvent]]  # decoded, and (without a registry) taken
    signing: Signing  # chunks and their signature checks in flight
    tps: set[TP]  # every partition its records came from


@dataclass
class Batch:
    """What ``prepare`` worked out; ``commit`` writes it."""
    moves: dict[TP, tuple[int, int]] = field(default_factory=dict)  # tp -> (start, end)
    dead: list[DeadLetter] = field(default_factory=list)
    rewinds: dict[TP, int] = field(default_factory=dict)  # tp -> offset to seek back to
    touched: dict[tuple[str, str], Subject] = field(default_factory=dict)
    deltas: dict[TP, dict[CounterKey, int]] = field(default_factory=dict)
    links: list[tuple[str, int, str, str, str]] = field(default_factory=list)  # chain rows
    #: tp -> (scope, period) -> the newest event time (epoch ms) among the events that
    #: moved the partial: the snapshot's "as of"
    as_of: dict[TP, dict[tuple[str, str], int]] = field(default_factory=dict)


class Processor:
    """A batch of source records in: decoded, verified, chained (``schemas.chain``),
    projected (``streams.projector``) and written to the store (``streams.store``) with
    the new positions in one transaction."""

    def __init__(self, engine: Engine, topics: Mapping[str, str], registry: KeyRegistry | None,
                 *, worker: str, stage: str = "streams", cache_size: int = 100_000) -> None:
        """``topics`` maps each source topic to the kind of subject it carries (DOSSIERS or
        CALLS). ``registry`` None turns signature verification off (benchmarks only). The
        store must have been opened (``open_store``)."""
        self.store = StreamStore(engine, worker)
        self.kinds = dict(topics)
        self.topic_of = {kind: topic for topic, kind in self.kinds.items()}
        self.registry = registry
        self.worker = worker
        self.stage = stage
        self.projector = Projector(cache_size)
        # libsodium releases the GIL: two threads keep the second core verifying
        self._verifier = (ThreadPoolExecutor(2, thread_name_prefix="verify")
                          if registry is not None else None)
        self._pos: dict[TP, int] = {}  # next offset to read: ahead of the store by a batch
        self._stored: dict[TP, int] = {}  # next offset as committed to the store

    # --- positions -----------------------------------------------------------------------

    def load_positions(self, tps: Iterable[TP]) -> dict[TP, int]:
        """The stored next offset of each partition (creating 0 rows for new ones)."""
        found = self.store.load_positions(tps)
        self._pos.update(found)
        self._stored.update(found)
        return found

    def position(self, tp: TP) -> int | None:
        """This worker's view of a partition's next offset (None if not loaded)."""
        return self._pos.get(tp)

    def stored_position(self, tp: TP) -> int | None:
        """A partition's next offset as this worker last committed or read it in the
        store (None if not loaded)."""
        return self._stored.get(tp)

    def forget(self, tps: Iterable[TP] | None = None) -> None:
        """Drop what is cached about these partitions (all if None): after a revocation or a
        failed commit, the store is the only truth."""
        if tps is None:
            self._pos.clear()
            self._stored.clear()
            self.projector.forget()
            return
        gone = set(tps)
        for tp in gone:
            self._pos.pop(tp, None)
            self._stored.pop(tp, None)
        self.projector.forget({(self.kinds[topic], p) for topic, p in gone
                               if topic in self.kinds})

    # --- phase 1: in memory --------------------------------------------------------------

    def prepare(self, records: Sequence[Source]) -> Batch:
        """Decode, verify, chain and fold a batch in memory (``begin`` then ``finish``)."""
        return self.finish(self.begin(records))

    def begin(self, records: Sequence[Source]) -> Started:
        """The first half of ``prepare``: positions, decoding, and the signature checks
        handed to the verifier threads. The worker begins batch k+1 before it finishes
        batch k, so the verifiers check k+1 while the main thread folds and stores k.
        Batches must be finished in the order they were begun."""
        batch = Batch()
        new_tps = {(r.topic, r.partition) for r in records} - self._pos.keys()
        self.load_positions(new_tps)
        accepted: list[tuple[Source, AnyEvent]] = []
        chunk: list[tuple[Source, AnyEvent]] = []
        signing: Signing = []
        ahead: dict[TP, int] = {}  # the furthest record skipped for being past the position
        for rec in records:
            tp = (rec.topic, rec.partition)
            expected = self._pos[tp]
            if rec.offset < expected:
                continue  # redelivered below the stored position
            if rec.offset > expected:
                # Our consumer is ahead of the store (a lost store, Kafka's committed offset
                # beyond ours, or records fetched before a seek back): never skip forward.
                ahead[tp] = max(ahead.get(tp, -1), rec.offset)
                continue
            start = batch.moves[tp][0] if tp in batch.moves else expected
            batch.moves[tp] = (start, rec.offset + 1)
            self._pos[tp] = rec.offset + 1
            event = self._check(rec, batch)
            if event is None:
                continue
            if self.registry is None:
                accepted.append((rec, event))
                continue
            chunk.append((rec, event))
            if len(chunk) == SIGNATURE_CHUNK:  # its signatures are checked while we go on
                signing.append((chunk, self._signatures(chunk)))
                chunk = []
        if chunk:
            signing.append((chunk, self._signatures(chunk)))
        # seek back only where a skipped record is still beyond what this batch reached
        batch.rewinds = {tp: self._pos[tp] for tp, far in ahead.items() if far >= self._pos[tp]}
        return Started(batch, accepted, signing, {(r.topic, r.partition) for r in records})

    def finish(self, started: Started) -> Batch:
        """The second half of ``prepare``: signatures, chain, fold, counter deltas."""
        batch, accepted = started.batch, started.accepted
        for part, problems in started.signing:
            for (rec, event), problem in zip(part, problems.result(), strict=True):
                if problem is None:
                    accepted.append((rec, event))
                else:
                    batch.dead.append(self._dead(rec, problem))
        accepted = self._chained(accepted, batch)
        batch.dead.sort(key=lambda d: (d.source_topic, d.partition, d.offset))
        kinds = self.kinds
        items = []
        partition_of: dict[tuple[str, str], int] = {}
        newest: dict[tuple[str, str], float] = {}  # subject -> its newest event time, s
        for r, e in accepted:
            key = (kinds[r.topic], e.dossier_id)
            items.append((key, e, r.value or b""))
            partition_of[key] = r.partition
            at = e.occurred_at.timestamp()
            if at > newest.get(key, -1e18):
                newest[key] = at
        self._restore(partition_of)
        batch.touched, deltas = self.projector.project(items)
        for key, delta in deltas.items():
            tp = (self.topic_of[key[0]], batch.touched[key].partition)
            into = batch.deltas.setdefault(tp, {})
            for ck, v in delta.items():
                into[ck] = into.get(ck, 0) + v
            at_ms = int(newest[key] * 1000)
            as_of = batch.as_of.setdefault(tp, {})
            for scope, period, _ in delta:
                if at_ms > as_of.get((scope, period), -1 << 62):
                    as_of[(scope, period)] = at_ms
        return batch

    def _restore(self, partition_of: Mapping[tuple[str, str], int]) -> None:
        """Bring the subjects the projector does not hold back from the store."""
        missing = self.projector.missing(partition_of)
        if not missing:
            return
        wanted: dict[str, list[str]] = {}
        for kind, sid in missing:
            wanted.setdefault(self.topic_of[kind], []).append(sid)
        stored = self.store.subject_events(wanted)
        for kind, sid in missing:
            self.projector.restore((kind, sid), partition_of[(kind, sid)],
                                   stored.get((self.topic_of[kind], sid)))

    def _check(self, rec: Source, batch: Batch) -> AnyEvent | None:
        """The event in a record, or None after adding a dead letter that says why not.
        Everything but the signature, which ``_signatures`` checks on another thread."""
        try:
            event = checked_event(rec.key, rec.value, None, signatures=False)
            if is_call_event(event) != (self.kinds[rec.topic] == CALLS):
                raise MotcuaError(f"type: {event.type!r} does not belong on {rec.topic}")
            return event
        except MotcuaError as exc:
            batch.dead.append(self._dead(rec, exc))
            return None

    def _dead(self, rec: Source, exc: MotcuaError) -> DeadLetter:
        return DeadLetter.of(exc, source_topic=rec.topic, partition=rec.partition,
                             offset=rec.offset, key=rec.key, value=rec.value, stage=self.stage)

    def _signatures(self, part: list[tuple[Source, AnyEvent]]
                    ) -> Future[list[MotcuaError | None]]:
        """Check the signatures of ``part`` on the verifier thread. libsodium releases the
        GIL, so on a second core this runs beside the decoding of the next chunk: verify
        (~45 µs an event) and decode (~30 µs) no longer add up."""
        registry, verifier = self.registry, self._verifier
        assert registry is not None and verifier is not None

        def check() -> list[MotcuaError | None]:
            out: list[MotcuaError | None] = []
            for _, event in part:
                try:
                    check_signature(event, registry)
                    out.append(None)
                except MotcuaError as exc:
                    out.append(exc)
            return out
        return verifier.submit(check)

    def _chained(self, accepted: list[tuple[Source, AnyEvent]], batch: Batch
                 ) -> list[tuple[Source, AnyEvent]]:
        """The events that take their place in their origin's chain (``schemas.chain``),
        judged against the store and each other in (origin, seq) order as sync judges them;
        forks and broken links become dead letters, redeliveries are dropped."""
        if not accepted:
            return accepted
        held, ids = self.store.chain_around([e for _, e in accepted])
        refused: set[tuple[str, int, int]] = set()
        for (rec, event), verdict in judge_in_order(accepted, lambda x: x[1], held, ids):
            if verdict is None:
                batch.links.append((event.origin, event.origin_seq, event.hash,
                                    event.prev_hash, event.event_id))
                continue
            refused.add((rec.topic, rec.partition, rec.offset))
            if verdict != DUPLICATE:
                batch.dead.append(self._dead(rec, MotcuaError(verdict)))
        return [(r, e) for r, e in accepted if (r.topic, r.partition, r.offset) not in refused]

    # --- phase 2: one transaction --------------------------------------------------------

    def commit(self, batch: Batch) -> dict[TP, set[tuple[str, str]]]:
        """Write the batch; returns the (scope, period) keys whose snapshot changed, per
        partition. Raises PositionConflict (writing nothing) if another worker moved one of
        the partitions meanwhile."""
        if not batch.moves:
            return {}
        version = time.time_ns()
        dead_by_tp: dict[TP, int] = defaultdict(int)
        for d in batch.dead:
            dead_by_tp[(d.source_topic, d.partition)] += 1
        changed: dict[TP, set[tuple[str, str]]] = {
            tp: {(scope, period) for scope, period, _ in delta}
            for tp, delta in batch.deltas.items()}
        try:
            self.store.write(
                batch.moves, dead_by_tp,
                subjects=[(self.topic_of[kind], sid, s.partition, b"\n".join(s.raws))
                          for (kind, sid), s in batch.touched.items()],
                counters=[(tp[0], tp[1], k[0], k[1], k[2], v)
                          for tp, delta in batch.deltas.items() for k, v in delta.items() if v],
                links=batch.links,
                marks=[(tp[0], tp[1], s, p, version, batch.as_of.get(tp, {}).get((s, p)))
                       for tp, keys in changed.items() for s, p in keys])
        except BaseException:
            self.forget()  # the projection ran ahead of the store: drop it
            raise
        for tp, (_, end) in batch.moves.items():
            self._stored[tp] = end
        return changed


"""The stream worker's engine, free of faust: a batch of source records in, counters out.

``prepare()`` decodes, verifies and folds a batch in memory and says which records must be
dead-lettered; the caller publishes those (and waits for the acknowledgement); ``commit()``
then writes subjects, counter deltas, snapshot marks and the new source positions in ONE
transaction. Exactness rests on that transaction, not on any changelog: after a crash the
store holds the fold of exactly the records before its positions, and records below a
position are skipped when they come again (docs/streams.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from sqlalchemy import Connection, Engine, bindparam, delete, select, tuple_, update
from sqlalchemy.exc import SQLAlchemyError

from infra.db import driver_sql, insert_ignore
from schemas.calls import CallState, apply_call, is_call_event
from schemas.chain import DUPLICATE, Link, Place, judge
from schemas.codec import decode
from schemas.counters import (
    RULES_VERSION,
    Contribution,
    CounterKey,
    contribution,
    diff,
    fold_subject,
)
from schemas.deadletter import DeadLetter
from schemas.errors import MotcuaError
from schemas.events import AnyEvent
from schemas.fold import DossierState, advance, apply
from schemas.integrity import KeyRegistry, check_signature, checked_event
from streams import tables as t

#: Events per signature job: big enough that a job's overhead is nothing, small enough that
#: the verifier starts while the batch is still being decoded.
SIGNATURE_CHUNK = 128

T = TypeVar("T")

DOSSIERS = "dossier"
CALLS = "call"
TP = tuple[str, int]


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


# Built once: composing a statement per call showed up in profiles of the worker.
_MOVE = (update(t.positions)
         .where(t.positions.c.topic == bindparam("t"), t.positions.c.partition == bindparam("p"),
                t.positions.c.next_offset == bindparam("start"))
         .values(next_offset=bindparam("end"), worker=bindparam("w"),
                 dead_letters=t.positions.c.dead_letters + bindparam("dead")))

#: Bound parameters per statement: far under SQLite's 32,766 and PostgreSQL's 65,535.
_MAX_PARAMS = 2000


def _param_chunks(items: Sequence[T], cost: Callable[[T], int]) -> list[list[T]]:
    """``items`` in runs whose ``cost`` (bound parameters) stays within _MAX_PARAMS."""
    runs: list[list[T]] = [[]]
    used = 0
    for item in items:
        if runs[-1] and used + cost(item) > _MAX_PARAMS:
            runs.append([])
            used = 0
        runs[-1].append(item)
        used += cost(item)
    return runs if runs[0] else []


_UPSERTS = {
    "subjects": "INSERT INTO stream_subjects (topic, subject_id, partition, events) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (topic, subject_id) "
                "DO UPDATE SET events = excluded.events",
    "counters": "INSERT INTO stream_counters (topic, partition, scope, period, measure, value) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (topic, partition, scope, period, measure) "
                "DO UPDATE SET value = stream_counters.value + excluded.value",
    "chain": "INSERT INTO stream_chain (origin, origin_seq, hash, prev_hash, event_id) "
             "VALUES (?, ?, ?, ?, ?)",
    "dirty": "INSERT INTO stream_dirty (topic, partition, scope, period, version) "
             "VALUES (?, ?, ?, ?, ?) ON CONFLICT (topic, partition, scope, period) "
             "DO UPDATE SET version = excluded.version",
}


def _upserts(engine: Engine) -> dict[str, str]:
    """The batch writes, in SQL that SQLite and PostgreSQL share (placeholders aside)."""
    sqls = {name: driver_sql(engine, sql) for name, sql in _UPSERTS.items()}
    missing = sorted(name for name, sql in sqls.items() if sql is None)
    if missing:
        raise ValueError(f"the stream store needs SQLite or PostgreSQL through psycopg, "
                         f"not {engine.dialect.name}+{engine.dialect.driver}")
    return {name: sql for name, sql in sqls.items() if sql is not None}


def _driver(conn: Connection, sql: str) -> str:
    out = driver_sql(conn, sql)
    assert out is not None  # _upserts refused any other driver when the Processor was built
    return out


def open_store(engine: Engine) -> bool:
    """Create the tables; empty them if the store was built by other counter rules (then
    every partition refolds from offset 0). True if it was emptied. Only the worker calls
    this, at start (a ``Processor`` never creates or empties a store: a view built to read
    one cannot wipe it). Two workers opening a new PostgreSQL store at once race on CREATE
    and on the marker row: the loser retries."""
    for attempt in range(5):
        try:
            return _open_store_once(engine)
        except SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _open_store_once(engine: Engine) -> bool:
    t.metadata.create_all(engine)
    with engine.begin() as conn:
        built_by = conn.execute(select(t.meta.c.value).where(t.meta.c.name == "rules")
                                ).scalar_one_or_none()
        if built_by == RULES_VERSION:
            return False
        has_state = conn.execute(select(t.positions.c.topic).limit(1)).first() is not None
        for table in (t.positions, t.subjects, t.counters, t.dirty, t.chain, t.meta):
            conn.execute(delete(table))
        conn.execute(t.meta.insert().values(name="rules", value=RULES_VERSION))
        return has_state


class PositionConflict(MotcuaError):
    """Another worker moved a partition's stored position: this worker's view is stale."""


class _Subject:
    """A cached subject: its distinct events (wire bytes), their ids and its fold."""

    __slots__ = ("contribution", "ids", "partition", "raws", "state")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.raws: list[bytes] = []
        self.ids: set[tuple[str, str]] = set()  # (event_id, hash)
        self.state: DossierState | CallState | None = None
        self.contribution: Contribution = {}


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
    touched: dict[tuple[str, str], _Subject] = field(default_factory=dict)
    deltas: dict[TP, dict[CounterKey, int]] = field(default_factory=dict)
    links: list[tuple[str, int, str, str, str]] = field(default_factory=list)  # chain rows


def _step(state: DossierState | CallState, event: AnyEvent) -> DossierState | CallState:
    return apply(state, event) if isinstance(state, DossierState) else apply_call(state, event)


class Processor:
    def __init__(self, engine: Engine, topics: Mapping[str, str], registry: KeyRegistry | None,
                 *, worker: str, stage: str = "streams", cache_size: int = 100_000) -> None:
        """``topics`` maps each source topic to the kind of subject it carries (DOSSIERS or
        CALLS). ``registry`` None turns signature verification off (benchmarks only). The
        store must have been opened (``open_store``)."""
        self.engine = engine
        self.kinds = dict(topics)
        self.topic_of = {kind: topic for topic, kind in self.kinds.items()}
        self.registry = registry
        self.worker = worker
        self.stage = stage
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], _Subject] = OrderedDict()
        # libsodium releases the GIL: two threads keep the second core verifying
        self._verifier = (ThreadPoolExecutor(2, thread_name_prefix="verify")
                          if registry is not None else None)
        self._pos: dict[TP, int] = {}  # next offset to read: ahead of the store by a batch
        self._stored: dict[TP, int] = {}  # next offset as committed to the store
        self._sql = _upserts(engine)

    # --- positions -----------------------------------------------------------------------

    def load_positions(self, tps: Iterable[TP]) -> dict[TP, int]:
        """The stored next offset of each partition (creating 0 rows for new ones)."""
        tps = list(tps)
        if not tps:
            return {}
        with self.engine.begin() as conn:
            rows = conn.execute(select(t.positions.c.topic, t.positions.c.partition,
                                       t.positions.c.next_offset)
                                .where(tuple_(t.positions.c.topic, t.positions.c.partition)
                                       .in_(tps))).all()
            found = {(r.topic, r.partition): int(r.next_offset) for r in rows}
            missing = [tp for tp in tps if tp not in found]
            if missing:
                insert_ignore(conn, t.positions, [
                    {"topic": tp[0], "partition": tp[1], "next_offset": 0, "dead_letters": 0,
                     "worker": self.worker} for tp in missing])
                found.update(dict.fromkeys(missing, 0))
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
            self._cache.clear()
            return
        gone = set(tps)
        for tp in gone:
            self._pos.pop(tp, None)
            self._stored.pop(tp, None)
        parts = {(self.kinds.get(topic), p) for topic, p in gone}
        for key in [k for k, s in self._cache.items() if (k[0], s.partition) in parts]:
            del self._cache[key]

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
        self._load_subjects({(self.kinds[r.topic], e.dossier_id): r.partition
                             for r, e in accepted})
        before: dict[tuple[str, str], Contribution] = {}
        for rec, event in accepted:
            key = (self.kinds[rec.topic], event.dossier_id)
            subject = self._cache[key]
            if key not in before:
                before[key] = subject.contribution
            if self._add(key[0], subject, event, rec.value or b""):
                batch.touched[key] = subject
        for key, subject in batch.touched.items():
            new = contribution(subject.state)
            delta = diff(before[key], new)
            subject.contribution = new
            if delta:
                into = batch.deltas.setdefault((self.topic_of[key[0]], subject.partition), {})
                for ck, v in delta.items():
                    into[ck] = into.get(ck, 0) + v
        self._trim()
        return batch

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
        held, ids = self._held([e for _, e in accepted])
        refused: set[tuple[str, int, int]] = set()
        for rec, event in sorted(accepted, key=lambda x: (x[1].origin, x[1].origin_seq)):
            verdict = judge(event, held, ids)
            if verdict is None:
                held[(event.origin, event.origin_seq)] = Link(event.hash, event.prev_hash)
                ids.add(event.event_id)
                batch.links.append((event.origin, event.origin_seq, event.hash,
                                    event.prev_hash, event.event_id))
                continue
            refused.add((rec.topic, rec.partition, rec.offset))
            if verdict != DUPLICATE:
                batch.dead.append(self._dead(rec, MotcuaError(verdict)))
        return [(r, e) for r, e in accepted if (r.topic, r.partition, r.offset) not in refused]

    def _held(self, events: list[AnyEvent]) -> tuple[dict[Place, Link], set[str]]:
        """The store's chain around ``events`` (each one's place and its neighbours'), and
        which of their event ids it holds: a few statements per batch, not one per origin
        (a statement costs more than the rows it reads here)."""
        seqs: dict[str, set[int]] = defaultdict(set)
        for e in events:
            seqs[e.origin].update((e.origin_seq - 1, e.origin_seq, e.origin_seq + 1))
        held: dict[Place, Link] = {}
        ids: set[str] = set()
        with self.engine.connect() as conn:
            for part in _param_chunks(sorted(seqs.items()), lambda kv: 1 + len(kv[1])):
                where = " OR ".join(f"(origin = ? AND origin_seq IN "
                                    f"({', '.join('?' * len(q))}))" for _, q in part)
                params = tuple(x for origin, q in part for x in (origin, *sorted(q)))
                for origin, seq, digest, prev in conn.exec_driver_sql(_driver(
                        conn, "SELECT origin, origin_seq, hash, prev_hash FROM stream_chain "  # noqa: S608 - placeholders only
                        f"WHERE {where}"), params):
                    held[(origin, int(seq))] = Link(digest, prev)
            wanted = sorted({e.event_id for e in events})
            for i in range(0, len(wanted), _MAX_PARAMS):
                chunk = tuple(wanted[i:i + _MAX_PARAMS])
                ids.update(r[0] for r in conn.exec_driver_sql(_driver(
                    conn, "SELECT event_id FROM stream_chain WHERE event_id IN "  # noqa: S608 - placeholders only
                    f"({', '.join('?' * len(chunk))})"), chunk))
        return held, ids

    def _load_subjects(self, wanted: Mapping[tuple[str, str], int]) -> None:
        missing = [k for k in wanted if k not in self._cache]
        stored: dict[tuple[str, str], bytes] = {}
        by_kind: dict[str, list[str]] = defaultdict(list)
        for kind, sid in missing:
            by_kind[kind].append(sid)
        c = t.subjects.c
        with self.engine.connect() as conn:
            for kind, ids in by_kind.items():
                # topic = ? AND subject_id IN (...): both on the primary key (a row-value IN
                # over the pair is a table scan in SQLite)
                for i in range(0, len(ids), 500):
                    for row in conn.execute(select(c.subject_id, c.events).where(
                            c.topic == self.topic_of[kind],
                            c.subject_id.in_(ids[i:i + 500]))):
                        stored[(kind, row.subject_id)] = bytes(row.events)
        for key in missing:
            subject = _Subject(wanted[key])
            blob = stored.get(key)
            if blob:
                subject.raws = blob.split(b"\n")
                events = [decode(raw) for raw in subject.raws]  # verified when first taken
                subject.ids = {(e.event_id, e.hash) for e in events}
                subject.state = fold_subject(events, key[0] == CALLS)
                subject.contribution = contribution(subject.state)
            self._cache[key] = subject
        for key in wanted:
            self._cache.move_to_end(key)

    @staticmethod
    def _add(kind: str, subject: _Subject, event: AnyEvent, raw: bytes) -> bool:
        """Fold one event into a subject; False for an exact duplicate."""
        ident = (event.event_id, event.hash)
        if ident in subject.ids:
            return False
        known_id = any(i == event.event_id for i, _ in subject.ids) if subject.ids else False
        subject.ids.add(ident)
        subject.raws.append(raw)
        calls = kind == CALLS

        def whole() -> DossierState | CallState | None:
            return fold_subject([decode(r) for r in subject.raws] if subject.raws[:-1]
                                else [event], calls)
        if known_id:  # an id reused by other content: only the whole set decides (fold)
            subject.state = whole()
        else:
            # mypy cannot solve the TypeVar for a union of two states
            subject.state = advance(subject.state, [event], _step, whole)  # type: ignore[arg-type, assignment]
        return True

    def _trim(self) -> None:
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

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
            with self.engine.begin() as conn:
                for (topic, partition), (start, end) in batch.moves.items():
                    res = conn.execute(_MOVE, {"t": topic, "p": partition, "start": start,
                                               "end": end, "w": self.worker,
                                               "dead": dead_by_tp.get((topic, partition), 0)})
                    if res.rowcount != 1:
                        raise PositionConflict(f"{topic}[{partition}] moved past {start} "
                                               "by another worker")
                # raw executemany: SQLAlchemy's per-row parameter processing cost more than
                # the writes themselves (the relay found the same)
                if batch.touched:
                    conn.exec_driver_sql(self._sql["subjects"], [
                        (self.topic_of[kind], sid, s.partition, b"\n".join(s.raws))
                        for (kind, sid), s in batch.touched.items()])
                rows = [(tp[0], tp[1], k[0], k[1], k[2], v)
                        for tp, delta in batch.deltas.items() for k, v in delta.items() if v]
                if rows:
                    conn.exec_driver_sql(self._sql["counters"], rows)
                if batch.links:
                    conn.exec_driver_sql(self._sql["chain"], batch.links)
                marks = [(tp[0], tp[1], s, p, version)
                         for tp, keys in changed.items() for s, p in keys]
                if marks:
                    conn.exec_driver_sql(self._sql["dirty"], marks)
        except BaseException:
            self.forget()  # the cache ran ahead of the store: drop it
            raise
        for tp, (_, end) in batch.moves.items():
            self._stored[tp] = end
        return changed

    # --- snapshots -----------------------------------------------------------------------

    def snapshots(self, keys: Iterable[tuple[TP, str, str]]
                  ) -> list[tuple[tuple[TP, str, str], dict[str, int], int, int]]:
        """(key, measures, next source offset, mark version) for each (partition, scope,
        period), read in one transaction so that values, offset and version agree."""
        by_tp: dict[TP, list[tuple[str, str]]] = defaultdict(list)
        for tp, scope, period in keys:
            by_tp[tp].append((scope, period))
        c, d = t.counters.c, t.dirty.c
        out: list[tuple[tuple[TP, str, str], dict[str, int], int, int]] = []
        with self.engine.connect() as conn:
            for tp, pairs in by_tp.items():
                offset = conn.execute(select(t.positions.c.next_offset).where(
                    t.positions.c.topic == tp[0], t.positions.c.partition == tp[1])
                ).scalar_one_or_none() or 0
                values: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
                versions: dict[tuple[str, str], int] = {}
                # scope IN (...) AND period IN (...) walks the primary key; the pairs
                # not asked for are dropped here
                wanted = set(pairs)
                scopes = sorted({p[0] for p in pairs})
                periods = sorted({p[1] for p in pairs})
                for i in range(0, len(scopes), 200):
                    for j in range(0, len(periods), 200):
                        where = (c.topic == tp[0], c.partition == tp[1],
                                 c.scope.in_(scopes[i:i + 200]),
                                 c.period.in_(periods[j:j + 200]))
                        for r in conn.execute(select(c.scope, c.period, c.measure, c.value)
                                              .where(*where)):
                            if (r.scope, r.period) in wanted:
                                values[(r.scope, r.period)][r.measure] = int(r.value)
                        dwhere = (d.topic == tp[0], d.partition == tp[1],
                                  d.scope.in_(scopes[i:i + 200]),
                                  d.period.in_(periods[j:j + 200]))
                        for v in conn.execute(select(d.scope, d.period, d.version)
                                              .where(*dwhere)):
                            versions[(v.scope, v.period)] = int(v.version)
                out.extend(((tp, s, q), {m: v for m, v in values[(s, q)].items() if v},
                            int(offset), versions.get((s, q), 0)) for s, q in pairs)
        return out

    def published_many(self, done: Sequence[tuple[TP, str, str, int]]) -> None:
        """Clear snapshot marks, except those a later batch set again (another version)."""
        if not done:
            return
        d = t.dirty.c
        stmt = delete(t.dirty).where(d.topic == bindparam("t"), d.partition == bindparam("p"),
                                     d.scope == bindparam("s"), d.period == bindparam("q"),
                                     d.version == bindparam("v"))
        with self.engine.begin() as conn:
            conn.execute(stmt, [{"t": tp[0], "p": tp[1], "s": s, "q": q, "v": v}
                                for tp, s, q, v in done])

    def pending(self, tps: Iterable[TP]) -> list[tuple[TP, str, str]]:
        """Snapshot marks left by an earlier run (a crash between commit and publish)."""
        tps = list(tps)
        if not tps:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.dirty.c.topic, t.dirty.c.partition, t.dirty.c.scope,
                                       t.dirty.c.period)
                                .where(tuple_(t.dirty.c.topic, t.dirty.c.partition).in_(tps)))
            return [((r.topic, r.partition), r.scope, r.period) for r in rows]

    def counters(self, topic: str | None = None) -> dict[CounterKey, int]:
        """Every counter summed over partitions (the tests compare it with a recount)."""
        totals: dict[CounterKey, int] = defaultdict(int)
        query = select(t.counters.c.scope, t.counters.c.period, t.counters.c.measure,
                       t.counters.c.value)
        if topic is not None:
            query = query.where(t.counters.c.topic == topic)
        with self.engine.connect() as conn:
            for r in conn.execute(query):
                totals[(r.scope, r.period, r.measure)] += int(r.value)
        return {k: v for k, v in totals.items() if v}

    def positions(self) -> dict[TP, tuple[int, int]]:
        """Stored (next offset, dead letters) of every partition."""
        with self.engine.connect() as conn:
            return {(r.topic, r.partition): (int(r.next_offset), int(r.dead_letters))
                    for r in conn.execute(select(t.positions))}

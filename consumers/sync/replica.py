"""A site's or commune's replica (issue 5): verified events in, rows out, exactly once.

``Replica.apply`` takes verified events and the source positions they came from, and in ONE
transaction stores the distinct events, brings every dossier (and, at a site, every hotline
call) they touch up to date with the same fold the node stores and the stream worker use
(``schemas.fold``), writes the rows in the node store's own row format (``infra.node_tables``),
and moves the positions. Same set of events in, same rows out, whatever the order or the
duplicates (DESIGN.md G3); a replayed batch changes nothing.

What a replica refuses (G6), and reports through ``before_commit`` so the caller can write
dead letters before the positions move past them:

- a fork: another event already holds the same place (origin, origin_seq), or the same
  event_id at another place;
- a chain break: the event's prev_hash is not the hash of the origin's previous event held,
  or the next event held names another predecessor.

A missing event (seq 41 held, 40 never arrived) is a gap, not an error: the later event is
kept, ``gaps()`` reports the hole until it is filled.

A site keeps every dossier; a commune keeps the dossiers it received, handled or returned
(the receiving node, or the origin of any of the dossier's events). Every replica keeps
every event: an origin's chain can only be checked whole, and a dossier may concern a
commune only from a late event on, when its earlier events must be folded too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Self, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import SQLAlchemyError

from infra.db import insert_for, insert_rows, reader
from infra.node_tables import NODE, UtcDateTime, state_from_row, state_to_row
from infra.node_tables import dossiers as node_dossiers
from infra.node_tables import hotline_calls as node_calls
from schemas.calls import fold_call, is_call_event
from schemas.chain import DUPLICATE, Link, Place, judge_in_order
from schemas.codec import decode, encode
from schemas.errors import MotcuaError
from schemas.events import AnyEvent, DossierReceived
from schemas.fold import DossierState, advance, apply, fold, in_fold_order
from schemas.nodes import get_node

metadata = MetaData()
T = TypeVar("T")

#: Every distinct event the replica holds; (origin, origin_seq) is the event's place in its
#: origin's chain, so a second, different event in the same place is a fork, not a copy.
events = Table(
    "replica_events", metadata,
    Column("origin", NODE, primary_key=True),
    Column("origin_seq", BigInteger, primary_key=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("hash", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("dossier_id", String(64), nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("body", LargeBinary, nullable=False),
)
Index("ix_replica_events_dossier", events.c.dossier_id)

#: The rows, in the node store's format (so "row for row" can be checked).
dossiers = node_dossiers.to_metadata(metadata)
calls = node_calls.to_metadata(metadata)

#: Where each source partition was applied up to, written with the rows it produced.
positions = Table(
    "replica_positions", metadata,
    Column("topic", String(200), primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("next_offset", BigInteger, nullable=False),
    # sha256 of the record at next_offset - 1: a log whose record there differs is another
    # log (recreated topics, a restarted in-memory broker), and the offsets mean nothing
    Column("last_digest", String(64)),
)

#: One row: whose replica this is, and what ``motcua sync status`` shows besides the lag.
status = Table(
    "replica_status", metadata,
    Column("node", NODE, primary_key=True),
    Column("stored", BigInteger, nullable=False),  # distinct events held
    Column("refused", BigInteger, nullable=False),  # forks and chain breaks
    Column("dead_letters", BigInteger, nullable=False),  # every record sent to dead-letters
    Column("applied_at", UtcDateTime),  # the last transaction that applied records
    Column("seen_at", UtcDateTime),  # the consumer's last sign of life
    Column("last_error", Text),
    Column("last_error_at", UtcDateTime),
)


class _RolledBack(Exception):
    """Ends a dry run: the transaction rolls back."""


class ReplicaMismatch(MotcuaError):
    """The database holds another node's replica, or is not a replica."""


try:  # COPY runs on the psycopg connection itself: its errors are not SQLAlchemy's
    import psycopg

    _DRIVER_ERRORS: tuple[type[Exception], ...] = (psycopg.Error,)
    _DRIVER_DATA_ERRORS: tuple[type[Exception], ...] = (psycopg.DataError,
                                                        psycopg.IntegrityError)
except ImportError:  # pragma: no cover - psycopg is a dependency
    _DRIVER_ERRORS = _DRIVER_DATA_ERRORS = ()

#: Any failure of the replica's database.
STORE_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, *_DRIVER_ERRORS)
#: Failures that the same records will meet again (a value the database refuses), as
#: opposed to the database being away: the consumer isolates the record that causes them.
DATA_ERRORS: tuple[type[Exception], ...] = (sa_exc.DataError, sa_exc.IntegrityError,
                                            *_DRIVER_DATA_ERRORS)


@dataclass(frozen=True)
class Refusal:
    event: AnyEvent
    reason: str


@dataclass
class Applied:
    stored: int = 0  # events new to the replica
    duplicates: int = 0  # already held, same bytes
    refused: list[Refusal] = field(default_factory=list)  # forks and chain breaks
    dossiers: int = 0  # dossier rows written
    calls: int = 0  # hotline call rows written

    def add(self, other: Applied) -> None:
        """Add another batch's result to this running total."""
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.refused.extend(other.refused)
        self.dossiers += other.dossiers
        self.calls += other.calls


BeforeCommit = Callable[[Sequence[Refusal]], None]

_HELD = select(events.c.origin_seq, events.c.hash, events.c.prev_hash).where(
    events.c.origin == bindparam("origin"), events.c.origin_seq.in_(bindparam("seqs",
                                                                              expanding=True)))
_HELD_IDS = select(events.c.event_id).where(events.c.event_id.in_(bindparam("ids",
                                                                            expanding=True)))
_BODIES = select(events.c.dossier_id, events.c.body).where(
    events.c.dossier_id.in_(bindparam("ids", expanding=True)))
_ROWS = select(dossiers).where(dossiers.c.dossier_id.in_(bindparam("ids", expanding=True)))
_CHUNK = 500  # ids per IN list: well under SQLite's and psycopg's parameter limits


class Replica:
    def __init__(self, engine: Engine, node: str = "site-phohien") -> None:
        """The replica of ``node`` held in ``engine``; nothing is created or changed here
        (``Replica.open`` creates one). A site keeps everything; a commune its own dossiers.
        A database that holds another node's replica, or a node store, is refused: mixing
        them would make both wrong."""
        self.engine = engine
        self.node = get_node(node).id
        self.is_site = get_node(node).is_site
        self._insert = insert_for(engine.dialect.name)
        where = engine.url.render_as_string(hide_password=True)
        tables, columns = _shape(engine)
        _refuse_node_store(tables, where)
        if status.name not in tables:
            raise ReplicaMismatch(f"{where} holds no replica yet")
        for table in metadata.sorted_tables:
            missing = sorted(set(table.c.keys()) - columns.get(table.name, set()))
            if missing:  # no migrations for a replica: it is rebuilt from the log instead
                raise ReplicaMismatch(
                    f"{where} was made by an older motcua ({table.name} lacks "
                    f"{', '.join(missing)}): remove it, and `motcua sync` rebuilds it from "
                    "the log")
        with reader(engine) as conn:
            held = conn.execute(select(status.c.node)).scalars().all()
        if list(held) != [self.node]:
            raise ReplicaMismatch(f"{where} holds the replica of "
                                  f"{', '.join(held) or 'no node yet'}, not {self.node}: "
                                  "give each node its own database")

    @classmethod
    def open(cls, engine: Engine, node: str = "site-phohien") -> Self:
        """The replica of ``node`` in ``engine``, its tables created (the missing ones) and
        claimed for ``node`` if the database holds none yet."""
        node = get_node(node).id
        _refuse_node_store(_shape(engine)[0], engine.url.render_as_string(hide_password=True))
        metadata.create_all(engine)
        with engine.begin() as conn:
            if not conn.execute(select(status.c.node)).first():
                conn.execute(status.insert().values(node=node, stored=0, refused=0,
                                                    dead_letters=0))
        return cls(engine, node)

    # --- applying ---------------------------------------------------------------------------

    def apply(self, batch: Sequence[AnyEvent],
              moved: Mapping[tuple[str, int], int] | None = None, *,
              digests: Mapping[tuple[str, int], str] | None = None,
              dead_letters: int = 0,
              before_commit: BeforeCommit | None = None,
              dry_run: bool = False) -> Applied:
        """Store ``batch`` (verified events) and bring the rows it touches up to date, with
        the source positions ``moved`` ({(topic, partition): next offset}, with the sha256
        of the record below each in ``digests``), in one transaction. ``before_commit``
        gets the refusals inside the transaction, to write them to dead-letters with the
        ``dead_letters`` records the caller rejected itself (if it raises, nothing is
        committed). Replaying a batch changes nothing. ``dry_run`` rolls everything back
        (does the database take these events?)."""
        result = Applied()
        try:
            self._apply(batch, moved, digests, dead_letters, before_commit, dry_run, result)
        except _RolledBack:
            pass
        return result

    def _apply(self, batch: Sequence[AnyEvent], moved: Mapping[tuple[str, int], int] | None,
               digests: Mapping[tuple[str, int], str] | None, dead_letters: int,
               before_commit: BeforeCommit | None, dry_run: bool, result: Applied) -> None:
        with self.engine.begin() as conn:
            # one writer at a time, as SQLite's BEGIN IMMEDIATE gives: two consumers on one
            # PostgreSQL replica would otherwise not see each other's neighbours in a chain
            conn.execute(select(status.c.node).with_for_update())
            kept = self._store(conn, batch, result)
            self._fold_dossiers(conn, [e for e in kept if not is_call_event(e)], result)
            if self.is_site:
                self._fold_calls(conn, {e.dossier_id for e in kept if is_call_event(e)},
                                 result)
            for (topic, partition), next_offset in (moved or {}).items():
                digest = (digests or {}).get((topic, partition))
                ins = self._insert(positions).values(topic=topic, partition=partition,
                                                     next_offset=next_offset,
                                                     last_digest=digest)
                conn.execute(ins.on_conflict_do_update(
                    index_elements=["topic", "partition"],
                    set_={"next_offset": ins.excluded.next_offset,
                          "last_digest": ins.excluded.last_digest}))
            if before_commit is not None:
                before_commit(result.refused)
                dead_letters += len(result.refused)
            now = datetime.now(UTC)
            changes: dict[str, object] = {
                "stored": status.c.stored + result.stored,
                "refused": status.c.refused + len(result.refused),
                "dead_letters": status.c.dead_letters + dead_letters, "seen_at": now}
            if batch or moved:
                changes["applied_at"] = now
            if result.refused:
                changes.update(last_error=f"refused: {result.refused[-1].reason}",
                               last_error_at=now)
            conn.execute(update(status).values(**changes))
            if dry_run:
                raise _RolledBack

    def _store(self, conn: Connection, batch: Sequence[AnyEvent], result: Applied
               ) -> list[AnyEvent]:
        """Insert the batch's new events; returns them. Duplicates are counted, forks and
        chain breaks refused."""
        wanted: dict[str, set[int]] = defaultdict(set)
        for e in batch:
            wanted[e.origin].update((e.origin_seq - 1, e.origin_seq, e.origin_seq + 1))
        held: dict[Place, Link] = {}
        for origin, seqs in wanted.items():
            for chunk in _chunks(sorted(seqs)):
                for row in conn.execute(_HELD, {"origin": origin, "seqs": chunk}):
                    held[(origin, row.origin_seq)] = Link(row.hash, row.prev_hash)
        taken: set[str] = set()
        for ids in _chunks(sorted({e.event_id for e in batch})):
            taken.update(conn.execute(_HELD_IDS, {"ids": ids}).scalars())
        kept: list[AnyEvent] = []
        for e, verdict in judge_in_order(batch, lambda e: e, held, taken):
            if verdict == DUPLICATE:
                result.duplicates += 1
            elif verdict is not None:
                result.refused.append(Refusal(e, verdict))
            else:
                kept.append(e)
        if kept:
            insert_rows(conn, events, [{
                "origin": e.origin, "origin_seq": e.origin_seq, "event_id": e.event_id,
                "hash": e.hash, "prev_hash": e.prev_hash, "dossier_id": e.dossier_id,
                "occurred_at": e.occurred_at, "body": encode(e)} for e in kept])
            result.stored = len(kept)
        return kept

    def _fold_dossiers(self, conn: Connection, new: list[AnyEvent], result: Applied) -> None:
        """Bring the rows of the dossiers ``new`` touches up to date. A row whose last event
        sorts before all of its new events takes them one by one (the node store's own
        path); any other is folded again from every event held."""
        by_dossier: dict[str, list[AnyEvent]] = defaultdict(list)
        for e in new:
            by_dossier[e.dossier_id].append(e)
        ids = sorted(by_dossier)
        current: dict[str, DossierState] = {}
        for chunk in _chunks(ids):
            for row in conn.execute(_ROWS, {"ids": chunk}):
                current[row.dossier_id] = state_from_row(row)
        states: dict[str, DossierState] = {}
        refold: list[str] = []
        for dossier_id in ids:
            arrived = in_fold_order(by_dossier[dossier_id])
            state = current.get(dossier_id)
            if state is None and not self.is_site:
                if any(self._concerns_me(e) for e in arrived):
                    refold.append(dossier_id)  # its earlier events may be held already
                continue
            # a site has a row for every dossier it holds events of: no row, no history;
            # a history to fold again is read below, for all such dossiers at once
            advanced = advance(state, arrived, apply,
                               partial(_first_fold, state, arrived, dossier_id))
            if advanced is None:
                refold.append(dossier_id)
            else:
                states[dossier_id] = advanced
        for dossier_id, held in _held_events(conn, refold).items():
            folded = fold([e for e in held if not is_call_event(e)], dossier_id)
            if folded is not None:
                states[dossier_id] = folded
        if not states:
            return
        gone = sorted(states)
        for chunk in _chunks(gone):
            conn.execute(delete(dossiers).where(dossiers.c.dossier_id.in_(chunk)))
        insert_rows(conn, dossiers, [state_to_row(states[d]) for d in gone])
        result.dossiers += len(gone)

    def _concerns_me(self, e: AnyEvent) -> bool:
        return e.origin == self.node or (isinstance(e, DossierReceived)
                                         and e.data.receiving_node == self.node)

    def _fold_calls(self, conn: Connection, touched: set[str], result: Applied) -> None:
        rows = []
        for call_id, held in _held_events(conn, sorted(touched)).items():
            state = fold_call([e for e in held if is_call_event(e)], call_id)
            if state is None or state.received_at is None or state.category is None:
                continue  # its hotline.call_received has not arrived yet
            rows.append({"call_id": call_id, "site": state.site,
                         "category": state.category.value, "received_at": state.received_at,
                         "closed_at": state.closed_at,
                         "resolved": state.resolved if state.closed_at is not None else None})
        if rows:
            for chunk in _chunks([r["call_id"] for r in rows]):
                conn.execute(delete(calls).where(calls.c.call_id.in_(chunk)))
            conn.execute(calls.insert(), rows)
            result.calls += len(rows)

    # --- status -----------------------------------------------------------------------------

    def note(self, error: str | None = None) -> None:
        """Record a sign of life, and the consumer's latest error if any, for ``sync
        status`` (in its own transaction: the error may be that applying failed)."""
        now = datetime.now(UTC)
        values: dict[str, object] = {"seen_at": now}
        if error is not None:
            values.update(last_error=error[:2000], last_error_at=now)
        with self.engine.begin() as conn:
            conn.execute(update(status).values(**values))

    def status(self) -> dict[str, object]:
        """The status row and the row counts, with ``error_current``: whether
        ``last_error`` still describes the replica (``error_is_current``)."""
        with reader(self.engine) as conn:
            row = conn.execute(select(status)).one()
            out: dict[str, object] = dict(row._mapping)
            out["error_current"] = error_is_current(out["last_error_at"], out["seen_at"])
            out["dossiers"] = conn.execute(select(func.count()).select_from(dossiers)).scalar()
            out["calls"] = conn.execute(select(func.count()).select_from(calls)).scalar()
        return out

    # --- reading ----------------------------------------------------------------------------

    def gaps(self) -> dict[str, list[tuple[int, int]]]:
        """Per origin, the missing seq ranges (first, last) below its highest held seq: a
        gap is kept until the event arrives (issue 5: "seq 41 arrives, 40 never did")."""
        query = text(
            "SELECT origin, prev + 1 AS first, origin_seq - 1 AS last FROM ("
            " SELECT origin, origin_seq, COALESCE(LAG(origin_seq) OVER (PARTITION BY origin"
            " ORDER BY origin_seq), 0) AS prev FROM replica_events) AS chain"
            " WHERE origin_seq > prev + 1 ORDER BY origin, first")
        out: dict[str, list[tuple[int, int]]] = {}
        with reader(self.engine) as conn:
            for origin, first, last in conn.execute(query):
                out.setdefault(origin, []).append((int(first), int(last)))
        return out

    def rows(self) -> list[dict[str, object]]:
        """Every dossier row, sorted: what two converged replicas agree on."""
        with reader(self.engine) as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(dossiers).order_by(dossiers.c.dossier_id))]

    def call_rows(self) -> list[dict[str, object]]:
        with reader(self.engine) as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(calls).order_by(calls.c.call_id))]

    def positions(self) -> dict[tuple[str, int], int]:
        return {tp: offset for tp, (offset, _) in self.positions_with_digests().items()}

    def positions_with_digests(self) -> dict[tuple[str, int], tuple[int, str | None]]:
        """Per source partition, (next offset, sha256 of the last record applied from it),
        read in one snapshot."""
        with reader(self.engine) as conn:
            return {(r.topic, r.partition): (int(r.next_offset), r.last_digest)
                    for r in conn.execute(select(positions))}

    def chain_starts(self) -> dict[str, str]:
        """The hash of each origin's first event held (seq 1): two logs of the same nodes
        with different histories differ there."""
        with reader(self.engine) as conn:
            return {o: h for o, h in conn.execute(
                select(events.c.origin, events.c.hash).where(events.c.origin_seq == 1))}

    def chain_heads(self) -> dict[str, int]:
        """Each origin's highest seq held."""
        with reader(self.engine) as conn:
            return {o: int(n) for o, n in conn.execute(
                select(events.c.origin, func.max(events.c.origin_seq))
                .group_by(events.c.origin))}

    def forget_position(self, topic: str, partition: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(positions).where(positions.c.topic == topic,
                                                 positions.c.partition == partition))

    def forget_positions(self) -> None:
        """Read the log again from its start (a new log of the same events: the embedded
        broker's memory is lost on restart). Events held stay, so the rows stay too, and
        each event read again is a duplicate."""
        with self.engine.begin() as conn:
            conn.execute(delete(positions))

    def clear(self) -> None:
        """Forget every event, row and position (the status row's node stays)."""
        with self.engine.begin() as conn:
            for table in (events, dossiers, calls, positions):
                conn.execute(delete(table))
            conn.execute(update(status).values(stored=0, refused=0, dead_letters=0,
                                               applied_at=None, last_error=None,
                                               last_error_at=None))


def error_is_current(error_at: object, seen_at: object) -> bool:
    """Whether the last error still holds: the consumer has written nothing since it. Every
    committed batch and every heartbeat (written only after polls that found nothing to do,
    so the consumer is caught up and its database writable) moves ``seen_at``; an error
    moves both, to the same time. A rejected record is then history: counted in
    ``dead_letters``, its reason on the dead-letters topic."""
    if not isinstance(error_at, datetime):
        return False
    return not isinstance(seen_at, datetime) or error_at >= seen_at


def _refuse_node_store(tables: set[str], where: str) -> None:
    if {"outbox", "node_heads"} & tables:
        raise ReplicaMismatch(f"{where} is a node store, not a replica: give the replica "
                              "its own database (--db / MOTCUA_SYNC_DB_URL)")


def _shape(engine: Engine) -> tuple[set[str], dict[str, set[str]]]:
    """The database's table names, and the columns of the replica's tables it has (read
    without SQLite's write lock)."""
    with reader(engine) as conn:
        inspector = sa_inspect(conn)
        tables = set(inspector.get_table_names())
        return tables, {t.name: {c["name"] for c in inspector.get_columns(t.name)}
                        for t in metadata.sorted_tables if t.name in tables}


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """``items`` in slices short enough for one IN list."""
    for i in range(0, len(items), _CHUNK):
        yield items[i:i + _CHUNK]


def _held_events(conn: Connection, ids: Iterable[str]) -> dict[str, list[AnyEvent]]:
    """Every held event of each subject in ``ids``."""
    out: dict[str, list[AnyEvent]] = defaultdict(list)
    for chunk in _chunks(sorted(ids)):
        for dossier_id, body in conn.execute(_BODIES, {"ids": chunk}):
            out[dossier_id].append(decode(bytes(body)))
    return out


def _first_fold(state: DossierState | None, arrived: list[AnyEvent], dossier_id: str
                ) -> DossierState | None:
    """``advance``'s whole fold inside one batch: only a dossier seen for the first time has
    its whole set at hand; None asks for the held history (``_held_events``)."""
    return fold(arrived, dossier_id) if state is None else None

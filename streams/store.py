"""The stream worker's SQL store: source positions, each subject's events, counter partials,
the chain, and the snapshot marks. One transaction per batch (``StreamStore.write``) is what
exactness rests on (docs/streams.md); the projection itself is in ``streams/projector.py``.
Also the small operations that need no worker (``motcua up``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from sqlalchemy import Connection, Engine, bindparam, delete, inspect, select, tuple_, update
from sqlalchemy.exc import SQLAlchemyError

from infra.db import driver_sql, insert_ignore, make_engine, sqlite_file
from schemas.chain import Link, Place
from schemas.counters import RULES_VERSION, CounterKey
from schemas.errors import MotcuaError
from schemas.events import AnyEvent
from streams import tables as t

T = TypeVar("T")
TP = tuple[str, int]

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
    # as_of keeps the newest of the mark's and the batch's (CASE: SQLite has max(a, b),
    # PostgreSQL GREATEST; both have CASE)
    "dirty": "INSERT INTO stream_dirty (topic, partition, scope, period, version, as_of) "
             "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (topic, partition, scope, period) "
             "DO UPDATE SET version = excluded.version, as_of = CASE WHEN "
             "stream_dirty.as_of IS NULL OR excluded.as_of > stream_dirty.as_of "
             "THEN excluded.as_of ELSE stream_dirty.as_of END",
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
    if "as_of" not in {c["name"] for c in inspect(engine).get_columns(t.dirty.name)}:
        # a store from before snapshots carried an event time: marks without one publish
        # an empty "as of", which the next batch of the key fills
        with engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {t.dirty.name} ADD COLUMN as_of BIGINT")
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



class StreamStore:
    """SQL access to one worker store (which ``open_store`` created). Reading needs no
    worker: tests and commands build one to look at a store, and nothing here creates,
    migrates or empties it."""

    def __init__(self, engine: Engine, worker: str = "reader") -> None:
        self.engine = engine
        self.worker = worker
        self._sql = _upserts(engine)

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
        return found

    def chain_around(self, events: Sequence[AnyEvent]) -> tuple[dict[Place, Link], set[str]]:
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

    def subject_events(self, wanted: Mapping[str, Sequence[str]]) -> dict[tuple[str, str], bytes]:
        """The stored events (newline-joined wire bytes) of subjects, by (topic, id);
        ``wanted`` maps each topic to the ids asked for. Subjects with none are left out."""
        stored: dict[tuple[str, str], bytes] = {}
        c = t.subjects.c
        with self.engine.connect() as conn:
            for topic, ids in wanted.items():
                # topic = ? AND subject_id IN (...): both on the primary key (a row-value IN
                # over the pair is a table scan in SQLite)
                for i in range(0, len(ids), 500):
                    for row in conn.execute(select(c.subject_id, c.events).where(
                            c.topic == topic, c.subject_id.in_(ids[i:i + 500]))):
                        stored[(topic, row.subject_id)] = bytes(row.events)
        return stored

    def write(self, moves: Mapping[TP, tuple[int, int]], dead: Mapping[TP, int],
              subjects: Sequence[tuple[str, str, int, bytes]],
              counters: Sequence[tuple[str, int, str, str, str, int]],
              links: Sequence[tuple[str, int, str, str, str]],
              marks: Sequence[tuple[str, int, str, str, int, int | None]]) -> None:
        """One batch in one transaction: each partition's position moved from start to
        end (with its dead letters), the subjects' events, counter deltas, chain links and
        snapshot marks (with their newest event time). Raises PositionConflict (writing
        nothing) if another worker moved one of the partitions meanwhile."""
        with self.engine.begin() as conn:
            for (topic, partition), (start, end) in moves.items():
                res = conn.execute(_MOVE, {"t": topic, "p": partition, "start": start,
                                           "end": end, "w": self.worker,
                                           "dead": dead.get((topic, partition), 0)})
                if res.rowcount != 1:
                    raise PositionConflict(f"{topic}[{partition}] moved past {start} "
                                           "by another worker")
            # raw executemany: SQLAlchemy's per-row parameter processing cost more than
            # the writes themselves (the relay found the same)
            for name, rows in (("subjects", subjects), ("counters", counters),
                               ("chain", links), ("dirty", marks)):
                if rows:
                    # executemany needs a list (a tuple would be read as one row)
                    conn.exec_driver_sql(self._sql[name],
                                         rows if isinstance(rows, list) else list(rows))

    def snapshots(self, keys: Iterable[tuple[TP, str, str]]
                  ) -> list[tuple[tuple[TP, str, str], dict[str, int], int, int, int | None]]:
        """(key, measures, next source offset, mark version, mark's newest event time in
        epoch ms) for each (partition, scope, period), read in one transaction so that
        values, offset and version agree."""
        by_tp: dict[TP, list[tuple[str, str]]] = defaultdict(list)
        for tp, scope, period in keys:
            by_tp[tp].append((scope, period))
        c, d = t.counters.c, t.dirty.c
        out: list[tuple[tuple[TP, str, str], dict[str, int], int, int, int | None]] = []
        with self.engine.connect() as conn:
            for tp, pairs in by_tp.items():
                offset = conn.execute(select(t.positions.c.next_offset).where(
                    t.positions.c.topic == tp[0], t.positions.c.partition == tp[1])
                ).scalar_one_or_none() or 0
                values: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
                versions: dict[tuple[str, str], tuple[int, int | None]] = {}
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
                        for v in conn.execute(select(d.scope, d.period, d.version, d.as_of)
                                              .where(*dwhere)):
                            versions[(v.scope, v.period)] = (int(v.version), v.as_of)
                out.extend(((tp, s, q), {m: v for m, v in values[(s, q)].items() if v},
                            int(offset), *versions.get((s, q), (0, None)))
                           for s, q in pairs)
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


def reset_store(url: str) -> bool:
    """Drop the worker tables (their positions describe a log that is gone); True if there
    was anything to drop. A worker recreates them on start."""
    engine = make_engine(url)
    try:
        existing = set(inspect(engine).get_table_names())
        if not existing & set(t.metadata.tables):
            return False
        t.metadata.drop_all(engine)
        return True
    finally:
        engine.dispose()


def stored_positions(url: str) -> dict[TP, tuple[int, int]] | None:
    """(next offset, dead letters) per source partition of the store at ``url``, or None
    when there is none (no worker ever started there). Read only: nothing is created."""
    if (path := sqlite_file(url)) is not None and not path.exists():
        return None
    engine = make_engine(url)
    try:
        if not inspect(engine).has_table(t.positions.name):
            return None
        return StreamStore(engine).positions()
    finally:
        engine.dispose()


def stored_progress(url: str) -> tuple[int, int]:
    """(records folded, dead letters) over every source partition in the store."""
    positions = (stored_positions(url) or {}).values()
    return sum(n for n, _ in positions), sum(d for _, d in positions)

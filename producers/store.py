"""Row-level access to the node store, on a connection the caller's transaction owns.

Locks: a writer locks its node's ``node_heads`` row first (serialising that node's writers,
so origin_seq is contiguous and the hash chain linear), then the dossier row. Always in that
order, so two nodes acting on one dossier cannot deadlock. SQLite ignores FOR UPDATE; its
``BEGIN IMMEDIATE`` (infra.db) serialises writers instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    func,
    insert,
    select,
    update,
)

from infra.db import insert_ignore, reader
from infra.node_tables import (
    dossiers,
    node_heads,
    outbox,
    simulation_runs,
    state_from_row,
    state_to_row,
)
from schemas.codec import decode, encode
from schemas.events import GENESIS_HASH, AnyEvent
from schemas.fold import DossierState, apply, fold
from schemas.fold import advance as advance_state
from schemas.topics import DOSSIER_EVENTS

# Statements are built once with bind parameters: building them per call (``.values(...)``
# with literals) cost more than the database work itself (profiled: ~70% of a service call).
_SELECT_HEAD = (select(node_heads.c.last_seq, node_heads.c.head_hash)
                .where(node_heads.c.node_id == bindparam("node")).with_for_update())
_MOVE_HEAD = (update(node_heads).where(node_heads.c.node_id == bindparam("origin"))
              .values(last_seq=bindparam("origin_seq"), head_hash=bindparam("hash")))
_INSERT_EVENT = insert(outbox)
# a hotline call may carry the same id as a dossier: only dossier events fold into dossiers
_EVENTS_OF = select(outbox.c.body).where(outbox.c.dossier_id == bindparam("dossier_id"),
                                         outbox.c.topic == DOSSIER_EVENTS)
_SELECT_DOSSIER = select(dossiers).where(dossiers.c.dossier_id == bindparam("dossier_id"))
_INSERT_DOSSIER = insert(dossiers)
_UPDATE_DOSSIER = update(dossiers).where(dossiers.c.dossier_id == bindparam("key"))


def lock_head(conn: Connection, node: str) -> tuple[int, str]:
    """The node's (last_seq, head_hash), locked until the transaction ends."""
    row = conn.execute(_SELECT_HEAD, {"node": node}).one_or_none()
    if row is None:  # the node's first write ever: create its head, then lock it
        insert_ignore(conn, node_heads,
                      {"node_id": node, "last_seq": 0, "head_hash": GENESIS_HASH})
        row = conn.execute(_SELECT_HEAD, {"node": node}).one()
    return int(row.last_seq), str(row.head_hash)


def append(conn: Connection, event: AnyEvent, topic: str) -> None:
    """Write ``event`` to the outbox and move the node's head to it."""
    conn.execute(_INSERT_EVENT, {
        "origin": event.origin, "origin_seq": event.origin_seq, "event_id": event.event_id,
        "type": event.type, "dossier_id": event.dossier_id, "occurred_at": event.occurred_at,
        "hash": event.hash, "topic": topic, "body": encode(event)})
    conn.execute(_MOVE_HEAD, {"origin": event.origin, "origin_seq": event.origin_seq,
                              "hash": event.hash})


def count_unpublished(engine: Engine) -> int:
    """Events in the outbox that no relay has recorded as published yet."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(outbox)
                                .where(outbox.c.published_at.is_(None))).scalar_one())


def republish_all(engine: Engine) -> int:
    """Mark every published event unpublished again (the log they went to is gone: a fresh
    in-memory broker); returns how many."""
    with engine.begin() as conn:
        result = conn.execute(update(outbox).where(outbox.c.published_at.is_not(None))
                              .values(published_at=None, kafka_partition=None,
                                      kafka_offset=None))
        return int(result.rowcount or 0)


def chain_starts(engine: Engine) -> dict[str, tuple[str, int]]:
    """Per node: the hash of its first event (seq 1) and its last seq, in the store."""
    with reader(engine) as conn:
        firsts = {o: h for o, h in conn.execute(
            select(outbox.c.origin, outbox.c.hash).where(outbox.c.origin_seq == 1))}
        lasts = {o: int(n) for o, n in conn.execute(
            select(node_heads.c.node_id, node_heads.c.last_seq))}
    return {o: (h, lasts.get(o, 0)) for o, h in firsts.items()}


def events_of(conn: Connection, dossier_id: str) -> list[AnyEvent]:
    return [decode(bytes(r.body)) for r in conn.execute(_EVENTS_OF, {"dossier_id": dossier_id})]


def load_dossier(conn: Connection, dossier_id: str, lock: bool = False) -> DossierState | None:
    query = _SELECT_DOSSIER.with_for_update() if lock else _SELECT_DOSSIER
    row = conn.execute(query, {"dossier_id": dossier_id}).one_or_none()
    return None if row is None else state_from_row(row)


def advance(conn: Connection, state: DossierState | None, event: AnyEvent) -> DossierState:
    """The dossier's state once ``event`` (already appended) is part of its set."""
    new = advance_state(state, [event], apply,
                  lambda: fold([event] if state is None else events_of(conn, event.dossier_id)))
    assert new is not None
    return new


def save_dossier(conn: Connection, state: DossierState, exists: bool) -> None:
    values = state_to_row(state)
    if exists:
        conn.execute(_UPDATE_DOSSIER, {**values, "key": state.dossier_id})
    else:
        conn.execute(_INSERT_DOSSIER, values)


# --- simulation runs (producers/sim) ---------------------------------------------------------


@dataclass(frozen=True)
class SimulationRun:
    start: date
    end: date
    seed: int
    scale: float
    stopped_at: datetime | None
    finished: bool

    def describe(self) -> str:
        """The run's parameters as the command line that continues it."""
        return (f"--from {self.start} --to {self.end} --seed {self.seed} "
                f"--scale {self.scale:g}")


def simulation_runs_of(engine: Engine) -> list[SimulationRun]:
    """Every simulator run recorded in this store, oldest first."""
    c = simulation_runs.c
    with reader(engine) as conn:
        return [SimulationRun(r.period_from, r.period_to, int(r.seed), float(r.scale),
                              r.stopped_at, bool(r.finished))
                for r in conn.execute(select(simulation_runs).order_by(c.run_id))]


def begin_simulation_run(engine: Engine, start: date, end: date, seed: int, scale: float,
                         resumed_from: datetime | None) -> int:
    with engine.begin() as conn:
        result = conn.execute(insert(simulation_runs).values(
            period_from=start, period_to=end, seed=seed, scale=scale,
            started_at=datetime.now(UTC), resumed_from=resumed_from, stopped_at=None,
            events_written=0, finished=False))
        key = result.inserted_primary_key
        assert key is not None
        return int(key[0])


def end_simulation_run(engine: Engine, run_id: int, stopped_at: datetime | None,
                       events_written: int, finished: bool) -> None:
    with engine.begin() as conn:
        conn.execute(update(simulation_runs).where(simulation_runs.c.run_id == run_id)
                     .values(stopped_at=stopped_at, events_written=events_written,
                             finished=finished))


def latest_event_between(engine: Engine, lo: datetime, hi: datetime) -> datetime | None:
    """The newest event time in [lo, hi) in the outbox: where a simulation of that period
    stopped (its calls commit in event-time order, so everything before it is written)."""
    with reader(engine) as conn:
        value = conn.execute(select(func.max(outbox.c.occurred_at))
                             .where(outbox.c.occurred_at >= lo, outbox.c.occurred_at < hi)
                             ).scalar_one()
    if value is None:
        return None
    # func.max bypasses the column type on SQLite: a naive UTC string or datetime comes back
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def subjects_at(engine: Engine, when: datetime) -> set[str]:
    """The dossier and call ids with an event at exactly ``when``."""
    with reader(engine) as conn:
        return {str(d) for (d,) in conn.execute(select(outbox.c.dossier_id)
                                                 .where(outbox.c.occurred_at == when))}

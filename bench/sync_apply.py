"""Replica apply throughput (events/s) into SQLite and PostgreSQL, beside the usual
hand-written consumer, on the same decoded events in the same run.

* motcua: ``consumers.sync.replica.Replica.apply``, batches of 2,000 events (the sync consumer's
  default poll), each batch one transaction with its source positions;
* peer, "upsert each event with autocommit": per event, INSERT the event (ON CONFLICT DO
  NOTHING), read the dossier row, apply the event with the same fold, upsert the row and
  the position, every statement committed on its own (what a consumer written by hand
  against ``session.execute`` with autocommit does).

Events are decoded and verified beforehand for both (the sync consumer's verify cost is in
the catch-up benchmark); both end with rows equal to the node stores' own, and that is
checked. SQLite files use WAL with synchronous=NORMAL for both, PostgreSQL its defaults.

Run: ``.venv/bin/python -m bench.sync_apply [DAYS] [SCALE]`` (default 3 days at scale 0.3).
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import date
from pathlib import Path

from sqlalchemy import Engine, bindparam, create_engine, event, select

from consumers.sync.replica import Replica, dossiers, events, metadata, positions
from infra.db import insert_for, make_engine
from infra.node_tables import state_from_row, state_to_row
from infra.settings import load_settings
from schemas.calls import is_call_event
from schemas.codec import decode, encode
from schemas.events import AnyEvent
from schemas.fold import apply, event_key, fold
from tests.conftest import _pg_schema
from tests.streams_support import simulate
from tests.sync_support import node_rows

BATCH = 2000


def ours(engine: Engine, batch: list[tuple[AnyEvent, int]]) -> float:
    replica = Replica.open(engine, "site-phohien")
    started = time.perf_counter()
    for i in range(0, len(batch), BATCH):
        chunk = batch[i:i + BATCH]
        replica.apply([e for e, _ in chunk], {("dossier-events", 0): chunk[-1][1] + 1})
    return time.perf_counter() - started


def peer(engine: Engine, batch: list[tuple[AnyEvent, int]]) -> float:
    """One event at a time, every statement its own transaction."""
    metadata.create_all(engine)
    ins = insert_for(engine.dialect.name)
    add_event = ins(events).on_conflict_do_nothing()
    row_of = select(dossiers).where(dossiers.c.dossier_id == bindparam("d"))
    bodies = select(events.c.body).where(events.c.dossier_id == bindparam("d"))
    up_row = ins(dossiers)
    up_row = up_row.on_conflict_do_update(
        index_elements=["dossier_id"],
        set_={c.name: up_row.excluded[c.name] for c in dossiers.c if c.name != "dossier_id"})
    up_pos = ins(positions)
    up_pos = up_pos.on_conflict_do_update(index_elements=["topic", "partition"],
                                          set_={"next_offset": up_pos.excluded.next_offset})
    if engine.dialect.name == "sqlite":
        # make_engine's BEGIN IMMEDIATE hook would wrap everything in one transaction:
        # a plain engine in the driver's autocommit mode, same WAL and sync settings
        engine = create_engine(engine.url, isolation_level="AUTOCOMMIT")
        event.listen(engine, "connect", lambda c, _r: (
            c.execute("PRAGMA journal_mode=WAL"), c.execute("PRAGMA synchronous=NORMAL")))
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for e, offset in batch:
            conn.execute(add_event, {
                "origin": e.origin, "origin_seq": e.origin_seq, "event_id": e.event_id,
                "hash": e.hash, "prev_hash": e.prev_hash, "dossier_id": e.dossier_id,
                "occurred_at": e.occurred_at, "body": encode(e)})
            if not is_call_event(e):
                row = conn.execute(row_of, {"d": e.dossier_id}).one_or_none()
                state = None if row is None else state_from_row(row)
                if state is not None and state.last_key is not None \
                        and event_key(e) > state.last_key:
                    state = apply(state, e)
                else:  # first or late: fold what is held
                    state = fold([decode(bytes(b)) for b in conn.execute(
                        bodies, {"d": e.dossier_id}).scalars() if b], e.dossier_id)
                if state is not None:
                    conn.execute(up_row, state_to_row(state))
            conn.execute(up_pos, {"topic": "dossier-events", "partition": 0,
                                  "next_offset": offset + 1})
    return time.perf_counter() - started


@contextmanager
def pg_schema() -> Iterator[Engine]:
    """An engine on a fresh schema of the test database, dropped after."""
    url = load_settings().test_pg_url
    admin = make_engine(url)
    try:
        with _pg_schema(admin, url) as engine:
            yield engine
    finally:
        admin.dispose()


def main() -> None:
    days = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    scale = float(sys.argv[2]) if len(sys.argv) > 2 else 0.3
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        work = simulate(tmp / "sim", date(2025, 7, 1), date(2025, 7, days), scale=scale)
        batch = [(decode(v), i) for i, (_, _, v) in enumerate(work.records)]
        want = node_rows(f"sqlite:///{tmp / 'sim' / 'nodes.db'}")
        n = len(batch)
        print(f"{n:,} events ({len(want):,} dossiers), {days} days at scale {scale:g}; "
              "events decoded and verified beforehand")
        print("| store | motcua ev/s | peer ev/s | ratio |\n|---|---:|---:|---:|")
        runs: list[tuple[str, Callable[[], AbstractContextManager[Engine]]]] = [
            ("SQLite", lambda: _sqlite(tmp)), ("PostgreSQL", pg_schema)]
        for name, make in runs:
            rates = []
            for fn in (ours, peer):
                with make() as engine:
                    seconds = fn(engine, batch)
                    got = Replica.open(engine, "site-phohien").rows()
                    assert got == want, f"{fn.__name__} on {name}: rows differ from the nodes"
                rates.append(n / seconds)
            print(f"| {name} | {rates[0]:,.0f} | {rates[1]:,.0f} | {rates[0] / rates[1]:.1f}× |",
                  flush=True)


@contextmanager
def _sqlite(tmp: Path) -> Iterator[Engine]:
    path = tmp / f"{uuid.uuid4().hex}.db"
    engine = make_engine(f"sqlite:///{path}", sqlite_sync="NORMAL")
    yield engine
    engine.dispose()


if __name__ == "__main__":
    main()

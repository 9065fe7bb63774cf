"""Small operations on a stream worker's store that need no worker (``motcua up``)."""

from __future__ import annotations

from sqlalchemy import func, inspect, select

from infra.db import make_engine
from streams import tables as t


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


def stored_progress(url: str) -> tuple[int, int]:
    """(records folded, dead letters) over every source partition in the store."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(t.positions.name):
                return 0, 0
            row = conn.execute(select(func.coalesce(func.sum(t.positions.c.next_offset), 0),
                                      func.coalesce(func.sum(t.positions.c.dead_letters), 0))
                               ).one()
            return int(row[0]), int(row[1])
    finally:
        engine.dispose()

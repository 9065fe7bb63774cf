"""SQLAlchemy engines for node stores and replicas: SQLite (embedded default) or PostgreSQL.

Every place where the two dialects differ is here: engines and their pragmas, INSERT ... ON
CONFLICT, driver-level SQL (placeholders, timestamps) and bulk inserts (COPY). The services
above call these and never test a dialect themselves.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache, partial
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

#: How long a SQLite writer waits for the lock before "database is locked".
BUSY_TIMEOUT_MS = 30_000


def insert_for(dialect_name: str) -> Callable[..., Any]:
    """The dialect's INSERT (with ON CONFLICT): SQLite and PostgreSQL spell upserts alike."""
    return postgresql.insert if dialect_name == "postgresql" else sqlite.insert


@cache
def _insert_ignore(dialect_name: str, table: Table) -> Any:
    # built once per table: building statements per call cost more than the database work
    return insert_for(dialect_name)(table).on_conflict_do_nothing()


def insert_ignore(conn: Connection, table: Table,
                  rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING of one row or many, on PostgreSQL and SQLite."""
    conn.execute(_insert_ignore(conn.dialect.name, table), rows)


def is_postgresql(bind: Connection | Engine) -> bool:
    return bind.dialect.name == "postgresql"


def driver_sql(bind: Connection | Engine, sql: str) -> str | None:
    """``sql``, written with ``?`` placeholders, in the driver's own placeholder style, for
    ``exec_driver_sql``; None for a driver other than sqlite3 and psycopg (the caller then
    takes SQLAlchemy's portable path). Driver-level statements skip SQLAlchemy's parameter
    processing, which cost a third of the relay's database time (profiled)."""
    driver = bind.dialect.driver
    if driver == "pysqlite":
        return sql
    if driver == "psycopg":
        return sql.replace("?", "%s")
    return None


def driver_datetime(bind: Connection | Engine, value: datetime) -> Any:
    """``value`` as SQLAlchemy's DateTime stores it, for driver-level SQL: SQLite keeps naive
    UTC text with microseconds; PostgreSQL takes the aware datetime."""
    if bind.dialect.name == "sqlite":
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(
            sep=" ", timespec="microseconds")
    return value


def insert_rows(conn: Connection, table: Table, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append many rows fast, in ``conn``'s transaction: COPY on psycopg (PostgreSQL runs an
    executemany as one statement per row, and SQLAlchemy compiles a multi-row VALUES
    slowly: COPY was ~2x the first and ~10x the second, bench/sync_apply.py); elsewhere
    the driver's executemany (sqlite3 loops over one prepared statement)."""
    if conn.dialect.driver != "psycopg":
        rows = list(rows)
        if rows:
            conn.execute(table.insert(), rows)
        return
    cols = [c.name for c in table.c]
    names = ", ".join(f'"{c}"' for c in cols)
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as cp:
        for row in rows:
            cp.write_row([row[c] for c in cols])


def make_engine(url: str, *, schema: str | None = None, sqlite_sync: str = "FULL",
                **kwargs: Any) -> Engine:
    """An engine for ``url``. On PostgreSQL, ``schema`` becomes the search_path, so one
    database can hold many independent stores (tests use a fresh schema per session).
    ``sqlite_sync="NORMAL"`` suits a store whose every transaction can be redone from Kafka
    (WAL + NORMAL survives a process crash; an OS crash may drop the last commits whole)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", partial(_sqlite_pragmas, sync=sqlite_sync))
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    connect_args = dict(kwargs.pop("connect_args", {}))
    if schema is not None:
        connect_args["options"] = f"-csearch_path={schema}"
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True, **kwargs)


#: Execution option for a connection that only reads: its transaction is a plain (deferred)
#: BEGIN, a WAL snapshot that waits for no writer. Measured: relay reads behind BEGIN
#: IMMEDIATE waited up to 0.5 s in SQLite's busy handler while nodes committed 200/s.
READ_ONLY = {"motcua_read_only": True}


def reader(engine: Engine) -> Connection:
    """A connection for reading only (no write lock on SQLite; a plain one elsewhere)."""
    return engine.connect().execution_options(**READ_ONLY)


#: Execution option for a write that would rather wait for its next chance than for the
#: lock (``writer_if_free``).
NO_WAIT = {"motcua_no_wait": True}


@contextmanager
def writer_if_free(engine: Engine) -> Iterator[Connection | None]:
    """A write transaction if one can begin at once, else None (nothing written). On
    SQLite that is "the write lock is free now": its busy handler sleeps in steps of up to
    100 ms, and a waiter kept losing the lock to nodes that commit 200 times a second (the
    relay's marks waited 100-230 ms a round, measured). Elsewhere a plain transaction."""
    conn = engine.connect().execution_options(**NO_WAIT)
    try:
        try:
            trans = conn.begin()
        except OperationalError as exc:
            if not _sqlite_busy(exc):
                raise
            yield None
            return
        with trans:
            yield conn
    finally:
        conn.close()


def _sqlite_busy(exc: OperationalError) -> bool:
    return isinstance(exc.orig, sqlite3.OperationalError) and "locked" in str(exc.orig)


def _sqlite_begin_immediate(conn: Any) -> None:
    # Take the write lock at BEGIN: a deferred transaction that reads and then writes can
    # fail with "database is locked" when another writer got in between.
    options = conn.get_execution_options()
    if options.get("motcua_read_only"):
        conn.exec_driver_sql("BEGIN")
    elif options.get("motcua_no_wait"):
        conn.exec_driver_sql("PRAGMA busy_timeout=0")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, sync: str = "FULL") -> None:
    # pysqlite's own transaction handling would BEGIN (deferred) behind our back.
    dbapi_connection.isolation_level = None
    # WAL lets readers (sync status, display) run beside the writer; foreign keys are off by
    # default in SQLite and on in PostgreSQL: make both behave the same.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute(f"PRAGMA synchronous={'NORMAL' if sync == 'NORMAL' else 'FULL'}")
    cursor.close()


def sqlite_file(url: str) -> Path | None:
    """The absolute path of a SQLite URL's file (query string and all), None for another
    database, an in-memory one or a URL that does not parse."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database \
            or parsed.database == ":memory:":
        return None
    return Path(parsed.database).absolute()

"""SQLAlchemy engines for node stores and replicas: SQLite (embedded default) or PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite


def insert_for(dialect_name: str) -> Callable[..., Any]:
    """The dialect's INSERT (with ON CONFLICT): SQLite and PostgreSQL spell upserts alike."""
    return postgresql.insert if dialect_name == "postgresql" else sqlite.insert


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


def _sqlite_begin_immediate(conn: Any) -> None:
    # Take the write lock at BEGIN: a deferred transaction that reads and then writes can
    # fail with "database is locked" when another writer got in between.
    if conn.get_execution_options().get("motcua_read_only"):
        conn.exec_driver_sql("BEGIN")
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
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute(f"PRAGMA synchronous={'NORMAL' if sync == 'NORMAL' else 'FULL'}")
    cursor.close()

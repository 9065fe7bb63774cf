"""Helpers for the sync tests: the node stores' own rows to compare replicas with, a sync
consumer in a thread or as a `motcua sync` process, and waiting until a replica has taken
every record."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from consumers.sync.consumer import SyncConsumer
from consumers.sync.replica import Replica
from infra.db import make_engine
from infra.node_tables import dossiers, hotline_calls
from schemas.keys import load_registry
from tests.integration.test_broker import cli_env
from tests.streams_support import CliProcess
from tests.timing import Deadline, budget


def node_rows(store: Engine | str, node: str | None = None) -> list[dict[str, Any]]:
    """The node stores' dossier rows, sorted; for a commune, the ones it must replicate:
    received there, or touched by one of its events."""
    engine = make_engine(store) if isinstance(store, str) else store
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(
            select(dossiers).order_by(dossiers.c.dossier_id))]
    if node is not None and not node.startswith("site-"):
        rows = [r for r in rows
                if r["receiving_node"] == node or node in json.loads(r["nodes"])]
    return rows


def node_calls(store: Engine | str) -> list[dict[str, Any]]:
    engine = make_engine(store) if isinstance(store, str) else store
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(
            select(hotline_calls).order_by(hotline_calls.c.call_id))]


@contextmanager
def sync_thread(replica: Replica, kafka_config: dict[str, Any], keys: Path, prefix: str,
                **kw: Any) -> Iterator[SyncConsumer]:
    """A sync consumer running in a thread while the block runs."""
    consumer = SyncConsumer(replica, kafka_config, load_registry(keys), prefix=prefix, **kw)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield consumer
    finally:
        stop.set()
        thread.join(budget(30))
        assert not thread.is_alive(), "the sync consumer did not stop"


def wait_applied(replica: Replica, ends: dict[tuple[str, int], int], timeout: float,
                 alive: Callable[[], str | None] | None = None) -> None:
    """Until the replica's stored positions reach ``ends``; ``alive`` returns why the
    consumer is gone, if it is. Within ``budget(timeout)`` (tests/timing.py)."""
    deadline = Deadline(timeout, f"replica {replica.node} to take every record")
    while True:
        stored = replica.positions()
        behind = {tp: (stored.get(tp, 0), end) for tp, end in ends.items()
                  if stored.get(tp, 0) < end}
        if not behind:
            return
        if alive is not None and (why := alive()):
            raise AssertionError(why)
        if deadline.expired():
            raise deadline.fail(f"still behind: {behind}")
        time.sleep(0.2)


class SyncProcess(CliProcess):
    """One `motcua sync --node ID` process; each start writes its own log."""

    def __init__(self, tmp: Path, bootstrap: str, prefix: str, keys: Path, node: str,
                 db: str, **env: str) -> None:
        self.tmp = tmp
        self.starts = 0
        self.node = node
        data = tmp / f"data-{node}"
        data.mkdir(exist_ok=True)
        super().__init__(tmp / f"sync-{node}.log", cli_env(
            MOTCUA_KAFKA_BOOTSTRAP=bootstrap, MOTCUA_TOPIC_PREFIX=prefix,
            MOTCUA_KEYS_DIR=str(keys), MOTCUA_DATA_DIR=str(data), MOTCUA_SYNC_DB_URL=db,
            **env))

    def start(self) -> SyncProcess:
        self.starts += 1  # a log per start: one run's output is never read as another's
        self.log = self.tmp / f"sync-{self.node}-{self.starts}.log"
        self.run("sync", "--node", self.node)
        return self

    def gone(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"sync {self.node} exited with {self.proc.returncode}: {self.output()}"
        return None

"""End-to-end lag of the background sync: a commit at a commune -> the dossier's row visible
in a provincial site's replica.

A driver receives dossiers at 200 per second (one committed transaction each, spread over
the 104 communes) through the real dossier service; ``motcua relay --all`` publishes them;
``motcua sync --node site-thaibinh`` (signatures verified) applies them to its SQLite
replica. A reader in this process polls the replica every 10 ms for new rows. Each dossier's
lag is (first poll that sees its row) − (commit); the relay's share is (published_at
recorded by the relay) − (commit), an upper bound since the relay records it after the
broker's acknowledgement.

Two set-ups: the embedded default (one SQLite file for the node stores, a SQLite replica)
and PostgreSQL for both (fresh schemas in the test database), as in production.

Run: ``.venv/bin/python -m bench.sync_latency [SECONDS]`` (default 60 s each).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from bench import receive_at_rate
from bench.sync_apply import pg_schema
from consumers.sync.replica import dossiers
from infra.broker import EmbeddedBroker
from infra.db import make_engine, reader
from infra.node_tables import outbox
from producers.migrate import open_store
from producers.service import DossierService
from schemas.keys import Keyring, init_keystore
from schemas.nodes import all_nodes, node_ids
from tests.integration.test_broker import MOTCUA, cli_env
from tests.streams_support import provision
from tests.sync_support import SyncProcess

RATE = 200.0


def quantiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100)
    return f"p50 {q[49]:,.0f} ms, p99 {q[98]:,.0f} ms, max {max(values):,.0f} ms"


def run(seconds: float, pg: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedBroker(
            log_path=Path(tmp_name) / "tansu.log") as broker, ExitStack() as stack:
        tmp = Path(tmp_name)
        prefix = "lag."
        provision({"bootstrap_servers": [broker.bootstrap]}, prefix)
        keys = tmp / "keys"
        init_keystore(keys, node_ids())
        if pg:
            store_url = stack.enter_context(pg_schema_url())
            db = stack.enter_context(pg_schema_url())
        else:
            store_url = f"sqlite:///{tmp / 'nodes.db'}"
            db = f"sqlite:///{tmp}/{{node}}.db"
        engine = open_store(store_url)
        service = DossierService(engine, Keyring(keys))
        relay = subprocess.Popen([*MOTCUA, "relay", "--all", "--db", store_url],
                                 env=cli_env(MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap,
                                             MOTCUA_TOPIC_PREFIX=prefix),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sync = SyncProcess(tmp, broker.bootstrap, prefix, keys, "site-thaibinh", db).start()
        replica = make_engine(db.format(node="site-thaibinh"))

        seen: dict[str, float] = {}
        stop = threading.Event()

        def watch() -> None:
            since = datetime.now(UTC) - timedelta(minutes=1)
            while not stop.is_set():
                try:
                    with reader(replica) as conn:  # no write lock: the consumer never waits
                        rows = conn.execute(select(dossiers.c.dossier_id, dossiers.c.received_at)
                                            .where(dossiers.c.received_at > since)).all()
                except SQLAlchemyError:  # the replica's tables are not made yet
                    rows = []
                now = time.perf_counter()
                for dossier_id, _ in rows:
                    seen.setdefault(dossier_id, now)
                if rows:
                    since = max(r.received_at for r in rows) - timedelta(seconds=5)
                stop.wait(0.01)

        communes = [n.id for n in all_nodes() if not n.is_site]
        # warm-up, not measured: every commune has written once, so the relay holds all
        # their leases (it claims the nodes of the store every 2 s: a node's very first
        # event may wait that long), and the sync consumer has created its replica
        for node in communes:
            service.receive(node, channel="online", procedure_code="1.000001",
                            field="Hộ tịch", due_date=date(2027, 1, 1),
                            components_digitised=True)
        time.sleep(6)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        committed, wall = receive_at_rate(service, communes, seconds, RATE)
        time.sleep(5)
        stop.set()
        watcher.join(5)
        relay.terminate()
        relay.wait(20)
        sync.stop()
        replica.dispose()
        with engine.connect() as conn:
            placed = conn.execute(select(outbox.c.dossier_id, outbox.c.published_at)).all()
        engine.dispose()
        relay_ms = [(r.published_at.timestamp() - wall[r.dossier_id]) * 1000
                    for r in placed if r.dossier_id in wall and r.published_at]
        lag_ms = [(seen[d] - t) * 1000 for d, t in committed.items() if d in seen]
        print(f"{'PostgreSQL' if pg else 'SQLite (embedded default)'}: {RATE:.0f} dossiers/s "
              f"committed at communes for {seconds:.0f} s ({len(committed):,} dossiers)")
        print(f"  commit -> row in site-thaibinh's replica: {quantiles(lag_ms)}; "
              f"{len(committed) - len(lag_ms)} never seen")
        print(f"  of which commit -> relay acknowledged: {quantiles(relay_ms)}", flush=True)


@contextmanager
def pg_schema_url() -> Iterator[str]:
    """A URL whose connections use a fresh schema of the test database (dropped after)."""
    with pg_schema() as engine:
        with engine.connect() as conn:
            schema = str(conn.exec_driver_sql("SELECT current_schema()").scalar())
        url = engine.url.update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    print("relay and sync each in their own process; signatures verified")
    for pg in (False, True):
        run(seconds, pg)


if __name__ == "__main__":
    main()

"""Catch-up: a new site replica built from an empty database over a whole simulated month.

The month's events are read from a node store that ``motcua simulate`` wrote (their outbox
order), produced to a fresh embedded broker (12 dossier partitions, as provisioned by
``motcua up``), and then ``motcua sync --node site-phohien`` (signatures verified, batches
of 2,000) runs against an empty replica: SQLite, then PostgreSQL. Timed from the process
start to the last position stored; the rows are then compared with the node stores' own.

Run: ``.venv/bin/python -m bench.sync_catchup STORE_URL KEYS_DIR`` — for July at scale 1:
``MOTCUA_DATA_DIR=/tmp/july .venv/bin/motcua simulate --from 2025-07-01 --to 2025-07-30
--speed max --no-relay`` first (~15 minutes), then
``.venv/bin/python -m bench.sync_catchup sqlite:////tmp/july/nodes.db /tmp/july/keys``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from kafka import KafkaProducer
from sqlalchemy import select

from bench.brokers import Usage
from bench.streams import peak_rss_mib
from bench.sync_latency import pg_schema_url
from consumers.sync.replica import Replica
from infra.broker import EmbeddedBroker
from infra.db import make_engine
from infra.node_tables import outbox
from tests.streams_support import provision
from tests.sync_support import SyncProcess, node_rows, wait_applied


def produce_store(store_url: str, bootstrap: str, prefix: str
                  ) -> tuple[int, dict[tuple[str, int], int]]:
    """Every outbox event of the store, in outbox order; returns (count, end offsets)."""
    engine = make_engine(store_url)
    producer = KafkaProducer(bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=20,
                             batch_size=512 * 1024, max_in_flight_requests_per_connection=1)
    ends: dict[tuple[str, int], int] = {}
    n = 0

    def done(md: object) -> None:
        tp = (md.topic, md.partition)  # type: ignore[attr-defined]
        ends[tp] = max(ends.get(tp, 0), md.offset + 1)  # type: ignore[attr-defined]

    with engine.connect() as conn:
        rows = conn.execution_options(yield_per=20_000).execute(
            select(outbox.c.topic, outbox.c.dossier_id, outbox.c.body)
            .order_by(outbox.c.origin, outbox.c.origin_seq))
        for topic, dossier_id, body in rows:
            producer.send(prefix + topic, key=dossier_id.encode(),
                          value=bytes(body)).add_callback(done)
            n += 1
            if n % 50_000 == 0:
                producer.flush(120)
    producer.flush(120)
    producer.close(10)
    engine.dispose()
    return n, ends


def catch_up(tmp: Path, bootstrap: str, prefix: str, keys: Path,
             ends: dict[tuple[str, int], int], db: str, usage: Usage | None = None,
             **env: str) -> tuple[float, float]:
    """(seconds from process start to the last position stored, peak RSS MiB) of `motcua
    sync --node site-phohien` on an empty replica at ``db`` (``{node}`` in it is the node);
    ``usage``, if given, covers the same section."""
    replica = Replica.open(make_engine(db.format(node="site-phohien")), "site-phohien")
    proc = SyncProcess(tmp, bootstrap, prefix, keys, "site-phohien", db, **env)
    began = time.perf_counter()
    if usage is not None:
        usage.start()
    proc.start()
    try:
        wait_applied(replica, ends, 3600, proc.gone)
        seconds = time.perf_counter() - began
        if usage is not None:
            usage.stop()
        assert proc.proc is not None
        rss = peak_rss_mib(proc.proc.pid)
    finally:
        proc.stop()
        replica.engine.dispose()
    return seconds, rss


def main() -> None:
    store_url, keys = sys.argv[1], Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedBroker(
            log_path=Path(tmp_name) / "tansu.log") as broker:
        tmp = Path(tmp_name)
        prefix = "cu."
        provision({"bootstrap_servers": [broker.bootstrap]}, prefix)
        started = time.perf_counter()
        total, ends = produce_store(store_url, broker.bootstrap, prefix)
        print(f"{total:,} events produced in {time.perf_counter() - started:.0f} s", flush=True)
        want = node_rows(store_url)
        print(f"{len(want):,} dossiers in the node stores")
        print("| replica | events | wall time | events/s | peak RSS |\n|---|---:|---:|---:|---:|",
              flush=True)
        for name in ("SQLite", "PostgreSQL"):
            with ExitStack() as stack:
                db = (stack.enter_context(pg_schema_url()) if name == "PostgreSQL"
                      else f"sqlite:///{tmp}/{{node}}.db")
                seconds, rss = catch_up(tmp, broker.bootstrap, prefix, keys, ends, db)
                replica = Replica.open(make_engine(db.format(node="site-phohien")), "site-phohien")
                assert replica.rows() == want, f"{name}: rows differ from the node stores"
                replica.engine.dispose()
                print(f"| {name} | {total:,} | {seconds:,.0f} s | {total / seconds:,.0f} | "
                      f"{rss:,.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()

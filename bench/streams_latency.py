"""Latency from a commit at a node to the snapshot on ``counters`` that includes it (G7).

A driver receives dossiers at 200 per second (one committed transaction each, spread over
the 106 nodes) through the real dossier service; the real relay publishes them; a
``motcua streams`` process folds them and publishes snapshots. A consumer of ``counters``
in this process sees each province snapshot with its source partition and ``next_offset``;
the relay recorded the partition and offset of every event in the outbox. So each event's
latency is (arrival of the first snapshot of its partition past its offset) − (commit).

Run: ``.venv/bin/python -m bench.streams_latency [SECONDS] [INTERVAL_MS ...]``
(default 60 s at the default 1,000 ms snapshot interval, then at 250 ms).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
from kafka import KafkaConsumer
from sqlalchemy import select

from bench import receive_at_rate
from infra.broker import EmbeddedBroker
from infra.node_tables import outbox
from producers.migrate import open_store
from producers.service import DossierService
from schemas.keys import Keyring, init_keystore
from schemas.nodes import node_ids
from tests.integration.test_broker import MOTCUA, cli_env
from tests.streams_support import WorkerProcess, provision

RATE = 200.0


def run(seconds: float, interval_ms: int) -> tuple[int, float, float, float]:
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedBroker(
            log_path=Path(tmp_name) / "tansu.log") as broker:
        tmp = Path(tmp_name)
        cfg = {"bootstrap_servers": [broker.bootstrap]}
        prefix = "lat."
        provision(cfg, prefix)
        keys = tmp / "keys"
        init_keystore(keys, node_ids())
        worker = WorkerProcess(tmp, broker.bootstrap, prefix, keys,
                               MOTCUA_SNAPSHOT_INTERVAL_MS=str(interval_ms)).start()
        engine = open_store(f"sqlite:///{tmp / 'nodes.db'}")
        service = DossierService(engine, Keyring(keys))
        # the relay as its own process, as deployed (`motcua relay --all`), not a thread
        # sharing this driver's GIL
        relay = subprocess.Popen([*MOTCUA, "relay", "--all", "--db",
                                  f"sqlite:///{tmp / 'nodes.db'}"],
                                 env=cli_env(MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap,
                                             MOTCUA_TOPIC_PREFIX=prefix),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        seen: dict[int, list[tuple[int, float]]] = {}  # partition -> [(next_offset, t)]
        stop = threading.Event()

        def watch() -> None:
            consumer = KafkaConsumer(prefix + "counters", **cfg, group_id=None,
                                     auto_offset_reset="earliest", fetch_max_wait_ms=10)
            while not stop.is_set():
                for records in consumer.poll(timeout_ms=50).values():
                    now = time.perf_counter()
                    for rec in records:
                        body = orjson.loads(rec.value)
                        if body["scope"] == "province" and len(body["period"]) == 10:
                            src = body["source"]
                            seen.setdefault(src["partition"], []).append(
                                (src["next_offset"], now))
            consumer.close()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # every node gets its first dossier before the timing (the relay claims new nodes
        # every 2 s, and a deployment's nodes exist long before their next dossier)
        receive_at_rate(service, node_ids(), len(node_ids()) / RATE, RATE)
        time.sleep(8)  # the worker joins its group, the relay claims the nodes
        committed, wall = receive_at_rate(service, node_ids(), seconds, RATE)
        time.sleep(interval_ms / 1000 + 3)
        stop.set()
        watcher.join(5)
        relay.terminate()
        relay.wait(20)
        worker.stop()
        with engine.connect() as conn:
            placed = conn.execute(select(outbox.c.dossier_id, outbox.c.kafka_partition,
                                         outbox.c.kafka_offset, outbox.c.published_at)).all()
        relay_ms = sorted((r.published_at.timestamp() - wall[r.dossier_id]) * 1000
                          for r in placed if r.dossier_id in wall and r.published_at)
        if relay_ms:
            rq = statistics.quantiles(relay_ms, n=100)
            print(f"  of which commit -> relay acknowledged: p50 {rq[49]:,.0f} ms, "
                  f"p99 {rq[98]:,.0f} ms", flush=True)
        placed = [r for r in placed if r.dossier_id in committed]  # not the warm-up
        latencies = []
        for row in placed:
            snaps = seen.get(row.kafka_partition, [])
            arrival = next((t for offset, t in snaps if offset > row.kafka_offset), None)
            if arrival is not None:
                latencies.append((arrival - committed[row.dossier_id]) * 1000)
        missing = len(placed) - len(latencies)
        if missing:
            print(f"  {missing} events never appeared in a snapshot", flush=True)
        q = statistics.quantiles(latencies, n=100)
        return len(latencies), q[49], q[98], max(latencies)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    intervals = [int(a) for a in sys.argv[2:]] or [1000, 250]
    print(f"{RATE:.0f} dossiers/s committed for {seconds:.0f} s; embedded broker; relay and "
          "worker (signatures verified) each in its own process")
    print("| snapshot interval | events | p50 ms | p99 ms | max ms |\n|---:|---:|---:|---:|---:|")
    for interval in intervals:
        n, p50, p99, worst = run(seconds, interval)
        print(f"| {interval} ms | {n:,} | {p50:,.0f} | {p99:,.0f} | {worst:,.0f} |", flush=True)


if __name__ == "__main__":
    main()

"""Relay throughput to the embedded broker, beside the peer "produce directly with
kafka-python, no outbox" on the same events in the same run: the price of durability.

Run: ``.venv/bin/python -m bench.relay [N]`` (its own embedded broker and SQLite store).
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import date, datetime
from pathlib import Path

from kafka import KafkaProducer
from nacl.signing import SigningKey
from sqlalchemy import select

from infra.broker import EmbeddedBroker
from infra.nodes import node_ids
from infra.topics import admin_client, ensure_topics
from producers.migrate import open_store
from producers.relay import Relay, producer_config
from producers.service import DossierService
from producers.tables import outbox
from schemas.events import LOCAL_TZ
from schemas.topics import topic_specs

T0 = datetime(2025, 7, 1, 8, 0, tzinfo=LOCAL_TZ)
BATCH = 2000  # the relay's default round


def fill(store_url: str, n: int) -> None:
    nodes = node_ids()[:20]
    service = DossierService(open_store(store_url), {x: SigningKey.generate() for x in nodes})
    with service.batch():
        for i in range(n):
            service.receive(nodes[i % len(nodes)], channel="in_person", procedure_code="1.001",
                            field="land", due_date=date(2025, 7, 5), components_digitised=False,
                            at=T0)


def main(n: int = 50_000) -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(
            log_path=Path(tmp) / "tansu.log") as broker:
        config = {"bootstrap_servers": [broker.bootstrap]}
        admin = admin_client(config)
        ensure_topics(admin, topic_specs("relay.") + topic_specs("direct."))
        admin.close()
        url = f"sqlite:///{tmp}/nodes.db"
        fill(url, n)
        engine = open_store(url)
        with engine.connect() as conn:
            rows = conn.execute(select(outbox.c.topic, outbox.c.dossier_id, outbox.c.body)
                                .order_by(outbox.c.origin, outbox.c.origin_seq)).all()

        producer = KafkaProducer(**producer_config(config))
        started = time.perf_counter()
        for row in rows:
            producer.send("direct." + row.topic, value=bytes(row.body),
                          key=row.dossier_id.encode())
        producer.flush()
        direct = len(rows) / (time.perf_counter() - started)
        producer.close()

        relay = Relay(engine, config, topic_prefix="relay.", batch_size=BATCH)
        started = time.perf_counter()
        while relay.publish_once():
            pass
        relayed = relay.stats.published / (time.perf_counter() - started)
        relay.close()
    print(f"{len(rows):,} events of ~{len(rows[0].body)} bytes, SQLite store, embedded broker")
    print("| publisher | events/s |\n|---|---:|")
    print(f"| peer: kafka-python producer, no outbox (same producer settings) | {direct:,.0f} |")
    print(f"| relay: read outbox, publish, mark partition/offset | {relayed:,.0f} |")
    print(f"| ratio relay / direct | {relayed / direct:.0%} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)

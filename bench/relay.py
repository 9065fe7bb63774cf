"""Relay throughput to the embedded broker, beside the peer "produce directly with
kafka-python, no outbox" on the same events in the same run: the price of durability.

Run: ``.venv/bin/python -m bench.relay [N]`` (its own embedded broker and SQLite store).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from nacl.signing import SigningKey
from sqlalchemy import Row, select

from infra.broker import EmbeddedBroker
from infra.node_tables import outbox
from infra.topics import admin_client, ensure_topics
from producers.migrate import open_store
from producers.relay import Relay, producer_config
from producers.service import DossierService
from schemas.events import LOCAL_TZ
from schemas.nodes import node_ids
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


def outbox_rows(store_url: str) -> list[Row[str, str, bytes]]:
    """The store's outbox (topic, dossier_id, body), in outbox order."""
    engine = open_store(store_url)
    with engine.connect() as conn:
        rows = list(conn.execute(select(outbox.c.topic, outbox.c.dossier_id, outbox.c.body)
                                 .order_by(outbox.c.origin, outbox.c.origin_seq)).all())
    engine.dispose()
    return rows


def direct_rate(config: dict[str, Any], rows: Sequence[Row[str, str, bytes]],
                prefix: str = "direct.") -> float:
    """The peer: the rows sent straight from memory with the relay's producer settings
    (events/s, until every one is acknowledged)."""
    producer = KafkaProducer(**producer_config(config))
    started = time.perf_counter()
    for row in rows:
        producer.send(prefix + row.topic, value=bytes(row.body), key=row.dossier_id.encode())
    producer.flush()
    rate = len(rows) / (time.perf_counter() - started)
    producer.close()
    return rate


def relay_rate(store_url: str, config: dict[str, Any], prefix: str = "relay.") -> float:
    """The relay publishing the whole outbox of the store, round after round (events/s)."""
    engine = open_store(store_url)
    relay = Relay(engine, config, topic_prefix=prefix, batch_size=BATCH)
    started = time.perf_counter()
    while relay.publish_once():
        pass
    rate = relay.stats.published / (time.perf_counter() - started)
    relay.close()
    engine.dispose()
    return rate


def main(n: int = 50_000) -> None:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(
            log_path=Path(tmp) / "tansu.log") as broker:
        config = {"bootstrap_servers": [broker.bootstrap]}
        admin = admin_client(config)
        ensure_topics(admin, topic_specs("relay.") + topic_specs("direct."))
        admin.close()
        url = f"sqlite:///{tmp}/nodes.db"
        fill(url, n)
        rows = outbox_rows(url)
        direct = direct_rate(config, rows)
        relayed = relay_rate(url, config)
    print(f"{len(rows):,} events of ~{len(rows[0].body)} bytes, SQLite store, embedded broker")
    print("| publisher | events/s |\n|---|---:|")
    print(f"| peer: kafka-python producer, no outbox (same producer settings) | {direct:,.0f} |")
    print(f"| relay: read outbox, publish, mark partition/offset | {relayed:,.0f} |")
    print(f"| ratio relay / direct | {relayed / direct:.0%} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000)

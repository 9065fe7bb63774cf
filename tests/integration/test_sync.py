"""The sync consumer (issue 5, in progress): a site replica built from the topic equals the
nodes' own stores row for row, and a replayed poll changes nothing."""

from __future__ import annotations

import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import select

from consumers.replica import Replica
from consumers.sync import SyncConsumer
from infra.db import make_engine
from producers.tables import dossiers
from schemas.keys import load_registry
from tests.streams_support import produce, provision, simulate


def test_a_site_replica_equals_the_node_stores_row_for_row(
        tmp_path: Path, kafka_config: dict[str, Any]) -> None:
    work = simulate(tmp_path / "sim", date(2025, 7, 1), date(2025, 7, 1), scale=0.05)
    prefix = f"sy{tmp_path.name[-8:].replace('_', '')}."
    provision(kafka_config, prefix)
    poison = [("dossier-events", b"D-GARBAGE", b"not an event")]
    ends = produce(kafka_config, prefix, [*work.records, *poison])
    replica = Replica(make_engine(f"sqlite:///{tmp_path / 'replica.db'}"))
    sync = SyncConsumer(replica, kafka_config, load_registry(work.keys_dir),
                        node="site-phohien", prefix=prefix, max_records=300)
    stop = threading.Event()
    thread = threading.Thread(target=sync.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while any(replica.positions().get(tp, 0) < end for tp, end in ends.items()):
        assert time.monotonic() < deadline, replica.positions()
        time.sleep(0.2)
    stop.set()
    thread.join(10)
    assert sync.dead == 1 and not sync.applied.forks and not sync.applied.broken

    node_store = make_engine(f"sqlite:///{tmp_path / 'sim' / 'nodes.db'}")
    with node_store.connect() as conn:
        nodes = [dict(r._mapping) for r in conn.execute(
            select(dossiers).order_by(dossiers.c.dossier_id))]
    assert len(nodes) > 100
    assert replica.rows() == nodes
    assert replica.gaps() == {}

    # a restart seeks to the stored positions: nothing is applied twice
    stored_before = sync.applied.stored
    stop = threading.Event()
    again = SyncConsumer(replica, kafka_config, load_registry(work.keys_dir),
                         node="site-phohien", prefix=prefix)
    thread = threading.Thread(target=again.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(3)
    stop.set()
    thread.join(10)
    assert again.applied.stored == 0 and again.applied.duplicates == 0
    assert stored_before > 0 and replica.rows() == nodes

"""Rotating a node's key while its service, the relay, a sync consumer and a stream worker
run (issue 14, docs/keys.md): no event on either side of the rotation is dead-lettered, the
chain stays whole, and the retired key's next event is refused."""

from __future__ import annotations

import base64
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from sqlalchemy import Engine, select

from consumers.sync.replica import Replica
from infra.cli.main import main
from infra.db import make_engine
from infra.node_tables import outbox
from producers.migrate import open_store
from producers.relay import Relay
from producers.service import DossierService
from producers.store import count_unpublished
from schemas.codec import decode, encode
from schemas.errors import BadSignature
from schemas.events import GENESIS_HASH, AnyEvent, DossierReceived
from schemas.integrity import KeyRegistry, seal, verify
from schemas.keys import Keyring, init_keystore, load_registry
from schemas.nodes import node_ids
from streams.store import StreamStore
from tests.conftest import Broker, unique_prefix
from tests.streams_support import (
    WorkerProcess,
    produce,
    provision,
    published_ends,
    store_view,
)
from tests.sync_support import node_rows, sync_thread

NODE = "11977"


def receive(service: DossierService, n: int) -> None:
    for _ in range(n):
        service.receive(NODE, channel="online", procedure_code="1.000001", field="Hộ tịch",
                        due_date=date(2027, 1, 1), components_digitised=True)


def published(store: Engine, prefix: str, timeout: float = 60) -> dict[tuple[str, int], int]:
    """Once the relay has published the whole outbox: the end offset of each partition."""
    deadline = time.monotonic() + timeout
    while count_unpublished(store):
        assert time.monotonic() < deadline, "the relay did not publish the outbox"
        time.sleep(0.1)
    return published_ends(store, prefix)


def chain(store: Engine) -> list[AnyEvent]:
    with store.connect() as conn:
        return [decode(bytes(r.body)) for r in conn.execute(
            select(outbox.c.body).where(outbox.c.origin == NODE).order_by(outbox.c.origin_seq))]


def wait_all(replica: Replica, view: StreamStore, ends: dict[tuple[str, int], int],
             worker: WorkerProcess, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        synced, folded = replica.positions(), view.positions()
        if all(synced.get(tp, 0) >= end and folded.get(tp, (0, 0))[0] >= end
               for tp, end in ends.items()):
            return
        assert worker.alive(), worker.output()
        assert time.monotonic() < deadline, (synced, folded, ends, worker.output())
        time.sleep(0.2)


@pytest.fixture
def prefix() -> str:
    return unique_prefix("kr")


def test_a_key_rotated_while_everything_runs_loses_no_event(
        tmp_path: Path, kafka_config: dict[str, Any], broker: Broker, prefix: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    init_keystore(keys, node_ids())
    url = f"sqlite:///{tmp_path / 'nodes.db'}"
    store = open_store(url)
    service = DossierService(store, Keyring(keys))  # one service, before and after
    provision(kafka_config, prefix, dossier_partitions=3)
    replica = Replica.open(make_engine(f"sqlite:///{tmp_path / 'site.db'}"), "site-phohien")
    worker = WorkerProcess(tmp_path, broker.bootstrap, prefix, keys).start()
    view = store_view(worker.store_url, keys, prefix)
    relay = Relay(store, kafka_config, topic_prefix=prefix)
    stop = threading.Event()
    relaying = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    relaying.start()
    try:
        with sync_thread(replica, kafka_config, keys, prefix) as sync:
            receive(service, 3)
            wait_all(replica, view, published(store, prefix), worker)

            assert main(["keys", "rotate", "--node", NODE, "--dir", str(keys),
                         "--db", url]) == 0
            out = capsys.readouterr().out
            assert f"{NODE}: new key valid from seq 4" in out and f"{NODE}.key.1" in out

            receive(service, 3)
            wait_all(replica, view, published(store, prefix), worker)
            assert sync.dead == 0, sync.last_error
            assert sum(dead for _, dead in view.positions().values()) == 0, worker.output()

            # what a thief of the retired key would write next: refused on both sides
            events = chain(store)
            retired = SigningKey(base64.b64decode((keys / f"{NODE}.key.1").read_text()))
            thief = seal(DossierReceived, origin=NODE, origin_seq=7, prev_hash=events[-1].hash,
                         dossier_id=f"D-{NODE}-STOLEN", occurred_at=events[-1].occurred_at,
                         data=events[0].data.model_dump(), key=retired)
            ends = produce(kafka_config, prefix, [("dossier-events", thief.dossier_id.encode(),
                                                   encode(thief))])
            deadline = time.monotonic() + 60
            while sync.dead < 1 or sum(d for _, d in view.positions().values()) < 1:
                assert time.monotonic() < deadline, (sync.dead, view.positions(), ends)
                time.sleep(0.2)
            assert "retired key" in (sync.last_error or ""), sync.last_error
    finally:
        stop.set()
        relaying.join(30)
        worker.stop()

    # the chain is whole, and each half carries its own key
    assert [e.origin_seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert [e.prev_hash for e in events] == [GENESIS_HASH] + [e.hash for e in events[:-1]]
    registry = load_registry(keys)
    assert [first for first, _ in registry.keys_of(NODE)] == [1, 4]
    old_only = KeyRegistry({NODE: registry.keys_of(NODE)[0][1]})
    for event in events:
        verify(event, registry)
        if event.origin_seq >= 4:
            with pytest.raises(BadSignature):
                verify(event, old_only)
    assert replica.gaps() == {}
    assert replica.rows() == node_rows(store)

"""Helpers for the stream worker tests: a simulated workload (real producers code, real
signatures), producing it under a topic prefix, running `motcua streams` as a process, and
waiting until its store has taken every record."""

from __future__ import annotations

import random
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer
from sqlalchemy import Engine, func, select

from infra.db import make_engine, reader
from infra.node_tables import outbox
from infra.topics import admin_client, ensure_topics
from producers.migrate import open_store
from producers.service import DossierService
from producers.sim.lifecycle import receipt_time
from producers.sim.plan import plan
from producers.sim.simulator import Simulator
from schemas.codec import decode, encode
from schemas.counters import CounterKey, recount
from schemas.events import GENESIS_HASH, DossierReceived
from schemas.integrity import seal
from schemas.keys import Keyring, init_keystore
from schemas.nodes import node_ids
from schemas.topics import DOSSIER_EVENTS, topic_specs
from streams import tables
from streams.store import StreamStore
from tests.integration.test_broker import MOTCUA, cli_env
from tests.timing import Deadline, budget


@dataclass
class Workload:
    keys_dir: Path
    records: list[tuple[str, bytes, bytes]]  # (base topic, key, value), in outbox order

    def expected(self, extra: Iterable[bytes] = ()) -> dict[CounterKey, int]:
        return recount([decode(v) for _, _, v in self.records] + [decode(v) for v in extra])


def simulate(tmp: Path, start: date, end: date, scale: float, seed: int = 3) -> Workload:
    keys = tmp / "keys"
    init_keystore(keys, node_ids())
    engine = open_store(f"sqlite:///{tmp / 'nodes.db'}")
    Simulator(DossierService(engine, Keyring(keys)), start, end, scale=scale, seed=seed).run()
    with engine.connect() as conn:
        rows = conn.execute(select(outbox.c.topic, outbox.c.body)
                            .order_by(outbox.c.origin, outbox.c.origin_seq)).all()
    engine.dispose()
    return Workload(keys, [(r.topic, orjson.loads(r.body)["dossier_id"].encode(), bytes(r.body))
                           for r in rows])


def provision(kafka_config: dict[str, Any], prefix: str, dossier_partitions: int = 12) -> None:
    specs = [replace(s, partitions=dossier_partitions) if s.name == prefix + DOSSIER_EVENTS
             else s for s in topic_specs(prefix)]
    admin = admin_client(kafka_config)
    try:
        ensure_topics(admin, specs)
    finally:
        admin.close()


def produce(kafka_config: dict[str, Any], prefix: str,
            records: Sequence[tuple[str, bytes | None, bytes | None]]
            ) -> dict[tuple[str, int], int]:
    """Send in order; returns the end offset (last + 1) reached in each partition."""
    producer = KafkaProducer(**kafka_config, acks="all", linger_ms=5,
                             max_in_flight_requests_per_connection=1)
    ends: dict[tuple[str, int], int] = {}
    try:
        futures = [producer.send(prefix + topic, key=key, value=value)
                   for topic, key, value in records]
        producer.flush(budget(60))
        for fut in futures:
            md = fut.get(timeout=budget(10))
            tp = (md.topic, md.partition)
            ends[tp] = max(ends.get(tp, 0), md.offset + 1)
    finally:
        producer.close(5)
    return ends


class CliProcess:
    """A `motcua ...` command run as a child process, its output in ``self.log``."""

    def __init__(self, log: Path, env: dict[str, str]) -> None:
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self, *args: str) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*MOTCUA, *args], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


class WorkerProcess(CliProcess):
    """One `motcua streams` process."""

    def __init__(self, tmp: Path, bootstrap: str, prefix: str, keys: Path, name: str = "w1",
                 store_url: str | None = None, **env: str) -> None:
        self.store_url = store_url or f"sqlite:///{tmp / 'streams.db'}"
        data = tmp / name
        data.mkdir(exist_ok=True)
        super().__init__(tmp / f"{name}.log", cli_env(
            MOTCUA_KAFKA_BOOTSTRAP=bootstrap, MOTCUA_TOPIC_PREFIX=prefix,
            MOTCUA_KEYS_DIR=str(keys), MOTCUA_DATA_DIR=str(data),
            MOTCUA_STREAMS_DB_URL=self.store_url, **env))

    def start(self, *args: str) -> WorkerProcess:
        self.run("streams", *args)
        return self


def store_view(store_url: str, keys: Path, prefix: str) -> StreamStore:
    """The worker's store, for reading it. The tables are made if the worker has not made
    them yet (empty: the reads see nothing)."""
    engine = make_engine(store_url)
    tables.metadata.create_all(engine)
    return StreamStore(engine)


def wait_for_positions(view: StreamStore, ends: dict[tuple[str, int], int], timeout: float,
                       worker: WorkerProcess | None = None) -> None:
    """Until the store's positions reach ``ends``, within ``budget(timeout)``."""
    deadline = Deadline(timeout, "the stream store to reach the ends")
    while True:
        stored = view.positions()
        if all(stored.get(tp, (0, 0))[0] >= end for tp, end in ends.items()):
            return
        if worker is not None and not worker.alive():
            raise AssertionError(f"worker exited: {worker.output()}")
        if deadline.expired():
            behind = {tp: (stored.get(tp, (0, 0))[0], end) for tp, end in ends.items()
                      if stored.get(tp, (0, 0))[0] < end}
            raise deadline.fail(f"store still behind: {behind}\n"
                                + (worker.output() if worker else ""))
        time.sleep(0.2)


def received_only(keys_dir: Path, start: date, end: date, scale: float = 1.0
                  ) -> list[tuple[str, bytes | None, bytes | None]]:
    """One signed dossier.received per dossier of the simulator's plan (exact at scale 1:
    201,034 for 1/7–30/7, 167,972 online), without the rest of the lifecycles: the
    published July figures at a size a test can afford."""
    keys = Keyring(keys_dir)
    rng = random.Random(1)
    heads: dict[str, tuple[int, str]] = defaultdict(lambda: (0, GENESIS_HASH))
    records: list[tuple[str, bytes | None, bytes | None]] = []
    for cell in plan(start, end, scale=scale):
        kinds = ([("in_person", False)] * cell.in_person + [("postal", False)] * cell.postal
                 + [("online", True)] * cell.online_full
                 + [("online", False)] * cell.online_partial)
        for i, (channel, full) in enumerate(kinds):
            seq, head = heads[cell.node.id]
            dossier = f"J-{cell.node.id}-{cell.day:%m%d}-{i}"
            event = seal(DossierReceived, origin=cell.node.id, origin_seq=seq + 1,
                         prev_hash=head, dossier_id=dossier,
                         occurred_at=receipt_time(rng, cell.day, channel == "online"),
                         data={"procedure_code": "1.000001", "field": "Hộ tịch",
                               "channel": channel, "full_online": full,
                               "receiving_node": cell.node.id,
                               "due_date": cell.day + timedelta(days=10),
                               "components_digitised": False},
                         key=keys(cell.node.id))
            heads[cell.node.id] = (seq + 1, event.hash)
            records.append(("dossier-events", dossier.encode(), encode(event)))
    return records


def three_receipts(path: Path, keys: Path) -> Engine:
    """A node store at ``path`` where commune 11977 received three dossiers: a small
    history of its own (two such stores hold different events at the same places)."""
    store = open_store(f"sqlite:///{path}")
    service = DossierService(store, Keyring(keys))
    for _ in range(3):
        service.receive("11977", channel="online", procedure_code="1.000001",
                        field="Hộ tịch", due_date=date(2027, 1, 1), components_digitised=True)
    return store


def published_ends(store: Engine, prefix: str) -> dict[tuple[str, int], int]:
    """The end offset (last + 1) of every partition's records the relay has marked published
    in the node ``store``, that is acknowledged by Kafka."""
    with reader(store) as conn:
        rows = conn.execute(select(outbox.c.topic, outbox.c.kafka_partition,
                                   func.max(outbox.c.kafka_offset))
                            .where(outbox.c.published_at.is_not(None))
                            .group_by(outbox.c.topic, outbox.c.kafka_partition)).all()
    return {(prefix + topic, int(p)): int(last) + 1 for topic, p, last in rows}

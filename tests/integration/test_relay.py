"""The outbox relay against a real broker (DESIGN.md G1, G6): nothing lost or reordered per
origin through a broker pause and a kill -9; one relay per node at a time."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kafka.errors import KafkaError
from sqlalchemy import Engine, select

from infra.broker import EmbeddedBroker, free_port
from infra.db import BUSY_TIMEOUT_MS, make_engine, reader
from infra.node_tables import node_heads, outbox
from infra.topics import admin_client, ensure_topics
from producers.migrate import migrate, open_store
from producers.relay import Relay
from producers.service import DossierService
from producers.sim.simulator import Simulator
from producers.store import count_unpublished
from schemas.codec import decode
from schemas.keys import Keyring, init_keystore
from schemas.nodes import node_ids
from schemas.topics import DOSSIER_EVENTS, HOTLINE_EVENTS, topic_specs
from streams.reader import read_to_end
from tests.conftest import Broker
from tests.integration.test_broker import MOTCUA, cli_env
from tests.timing import Deadline, budget, poll_until

DAY = date(2025, 7, 2)


@pytest.fixture(scope="session")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys")
    init_keystore(path, node_ids())
    return path


@pytest.fixture
def prefix(kafka_config: dict[str, Any]) -> str:
    """A fresh set of registry topics for this test."""
    name = f"r{uuid.uuid4().hex[:8]}."
    admin = admin_client(kafka_config)
    ensure_topics(admin, topic_specs(name))
    admin.close()
    return name


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Engine]:
    engine = open_store(f"sqlite:///{tmp_path / 'nodes.db'}")
    yield engine
    engine.dispose()


def simulate(engine: Engine, keys_dir: Path, scale: float, **kwargs: Any) -> Simulator:
    sim = Simulator(DossierService(engine, Keyring(keys_dir)), DAY, DAY, scale=scale, seed=7,
                    **kwargs)
    sim.run()
    assert not sim.summary.refused, sim.summary.refused[:3]
    return sim


def heads(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {r.node_id: r.last_seq for r in conn.execute(select(node_heads))}




def read_all(config: dict[str, Any], topics: list[str], want: int,
             timeout: float = 60.0) -> list[Any]:
    """Every record of ``topics`` from the start to each partition's high watermark, read
    again until at least ``want`` are there or ``budget(timeout)`` runs out. Never cut at
    ``want``: where duplicates are expected, a read that stopped at a count would miss
    originals."""
    deadline = Deadline(timeout, f"{want} records")
    while True:
        records = [r for topic in topics
                   for r in read_to_end(config, topic, max(1.0, deadline.remaining()))]
        if len(records) >= want or deadline.expired():
            return records
        time.sleep(0.2)


def assert_complete_and_ordered(records: list[Any], expected: dict[str, int]) -> int:
    """Every origin's seqs 1..N present; within a partition an origin's first sightings come
    in seq order; a duplicate is the same event (same bytes, same event_id). Returns the
    number of duplicates."""
    seen: dict[tuple[str, int], bytes] = {}
    last_in_partition: dict[tuple[str, int, str], int] = defaultdict(int)
    duplicates = 0
    for record in records:
        event = decode(record.value)
        key = (event.origin, event.origin_seq)
        if key in seen:
            assert seen[key] == record.value, f"seq {key} published with other content"
            duplicates += 1
            continue
        seen[key] = record.value
        slot = (record.topic, record.partition, event.origin)
        assert event.origin_seq > last_in_partition[slot], f"{key} out of order in {slot}"
        last_in_partition[slot] = event.origin_seq
        assert record.key == event.dossier_id.encode()
    got: dict[str, set[int]] = defaultdict(set)
    for origin, seq in seen:
        got[origin].add(seq)
    for origin, n in expected.items():
        missing = set(range(1, n + 1)) - got[origin]
        assert not missing, f"{origin}: {len(missing)} events missing, e.g. {sorted(missing)[:5]}"
    return duplicates


def topics_of(prefix: str) -> list[str]:
    return [prefix + DOSSIER_EVENTS, prefix + HOTLINE_EVENTS]


def run_relay(relay: Relay) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Until ``predicate()``, within ``budget(timeout)`` (tests/timing.py)."""
    poll_until(predicate, timeout, what, interval=0.05)


def test_relay_publishes_everything_in_order_with_send_time_stamps(
        store: Engine, keys_dir: Path, kafka_config: dict[str, Any], prefix: str) -> None:
    simulate(store, keys_dir, scale=0.02)
    DossierService(store, Keyring(keys_dir)).call_received("site-phohien", "land")
    expected = heads(store)
    relay = Relay(store, kafka_config, topic_prefix=prefix)
    started = time.time()
    while relay.publish_once():
        pass
    relay.close()
    assert count_unpublished(store) == 0
    records = read_all(kafka_config, topics_of(prefix), sum(expected.values()))
    assert assert_complete_and_ordered(records, expected) == 0
    # the record timestamp is the send time, not the event time (July 2025)
    assert all(r.timestamp / 1000 >= started - 5 for r in records)
    with store.connect() as conn:
        marked = conn.execute(select(outbox.c.kafka_partition, outbox.c.kafka_offset)).all()
    assert all(p is not None and o is not None for p, o in marked)
    assert {r.topic for r in records} == set(topics_of(prefix))


def test_broker_paused_20s_mid_day_loses_nothing(
        store: Engine, keys_dir: Path, broker: Broker, kafka_config: dict[str, Any],
        prefix: str) -> None:
    """SIGSTOP the broker (every node of a cluster) for 20 s while the simulated day goes
    on; the store keeps taking work, and after SIGCONT every origin's 1..N reach the topic,
    in order: the events written during the pause among them."""
    relay = Relay(store, kafka_config, topic_prefix=prefix)
    stop, thread = run_relay(relay)
    # 1200 simulated seconds a second: the office day (7:00-17:30) runs from ~21 s to ~53 s
    # of wall time, so the pause, which starts once the relay is in flow (~25 s), falls
    # inside it even when the relay is slow to get there
    sim = Simulator(DossierService(store, Keyring(keys_dir)), DAY, DAY, scale=0.05,
                    seed=3, speed=1200)
    runner = threading.Thread(target=sim.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: relay.stats.published > 100, 60, "the first events to publish")
        # the store's write rate just before the pause says how much work the pause should
        # see; it varies with the machine and the hour of the simulated day
        window = 2.0
        before = sum(heads(store).values())
        time.sleep(window)
        broker.pause()
        try:
            written_at_pause = sum(heads(store).values())
            rate = (written_at_pause - before) / window
            time.sleep(20)  # the outage itself: what is tested, not a wait to scale
            during = sum(heads(store).values()) - written_at_pause
        finally:
            broker.resume()
        # at least half of what the rate predicts: the store kept taking work
        wanted = max(1, int(rate * 20 / 2))
        assert during >= wanted, (f"the store stopped taking work while the broker was "
                                  f"down: {during} events written in the 20 s pause, "
                                  f"{rate:.1f}/s before it (wanted >= {wanted})")
        time.sleep(2)  # and a little of the day after it
    finally:
        sim.stop.set()  # the rest of the day proves nothing more
        runner.join(budget(30))
    assert not runner.is_alive(), "the simulator did not stop"
    wait_until(lambda: count_unpublished(store) == 0, 120, "the outbox to drain")
    stop.set()
    thread.join(30)
    expected = heads(store)
    records = read_all(kafka_config, topics_of(prefix), sum(expected.values()))
    assert not sim.summary.refused
    duplicates = assert_complete_and_ordered(records, expected)
    assert len(records) == sum(expected.values()) + duplicates
    assert len(records) - duplicates >= written_at_pause + during  # the pause's work, sent


def test_relay_killed_with_minus_9_resumes_without_gaps(
        store: Engine, keys_dir: Path, kafka_config: dict[str, Any], prefix: str,
        broker: Broker, tmp_path: Path) -> None:
    simulate(store, keys_dir, scale=0.3)
    expected = heads(store)
    total = sum(expected.values())
    env = cli_env(MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap, MOTCUA_TOPIC_PREFIX=prefix,
                  MOTCUA_DB_URL=str(store.url), MOTCUA_KEYS_DIR=str(keys_dir))

    def start(holder: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*MOTCUA, "relay", "--all", "--lease-seconds", "6",
                                 "--batch-size", "50", "--holder", holder], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    first = start("first")
    try:
        wait_until(lambda: 0 < total - count_unpublished(store), 60, "the first relay to publish")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(budget(10))
    finally:
        first.kill()
    left = count_unpublished(store)
    assert 0 < left < total, "kill -9 came too late to test a resume"
    second = start("second")
    try:
        wait_until(lambda: count_unpublished(store) == 0, 90, "the second relay to drain")
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=budget(30))
    assert second.returncode == 0, err.decode()
    records = read_all(kafka_config, topics_of(prefix), total)
    duplicates = assert_complete_and_ordered(records, expected)
    assert duplicates <= 100  # at most two rounds of 50 acknowledged but unrecorded


def test_a_dead_relays_nodes_are_taken_over_only_after_its_lease(
        store: Engine, keys_dir: Path, kafka_config: dict[str, Any], prefix: str) -> None:
    """Relay a publishes a few rounds and dies without a word (no close, leases held);
    b gets nothing until a's lease has run out, then publishes the rest."""
    simulate(store, keys_dir, scale=0.05)
    expected = heads(store)
    a = Relay(store, kafka_config, topic_prefix=prefix, holder="a", batch_size=100,
              lease_seconds=9)
    for _ in range(3):
        with contextlib.suppress(KafkaError):  # a slow first ack: run() would retry it
            a.publish_once()
    ends = a._held.values()  # what a wrote: its leases run until then
    leases_end, last_end = min(ends), max(ends)
    b = Relay(store, kafka_config, topic_prefix=prefix, holder="b", batch_size=100,
              lease_seconds=9)
    assert b.publish_once() == 0, "b published while a's lease was running"
    stop, thread = run_relay(b)
    wait_until(lambda: b.stats.published > 0, 60, "b to publish")
    first_b = datetime.now(UTC)
    wait_until(lambda: count_unpublished(store) == 0, 60, "b to drain the outbox")
    stop.set()
    thread.join(30)
    # b's first acknowledged send came after every lease of a had run out (the lease: a
    # guarantee, not scaled), and soon after (it claims every 2 s; a round then takes well
    # under 5 s on an unloaded machine: that slack is scaled)
    assert leases_end <= first_b <= last_end + timedelta(seconds=budget(10)), (
        leases_end, first_b)
    records = read_all(kafka_config, topics_of(prefix), sum(expected.values()))
    duplicates = assert_complete_and_ordered(records, expected)
    assert duplicates <= 100  # a's last round: acknowledged, never recorded
    a._drop_producer()  # what the dead process's exit would have done


def test_a_relay_survives_a_store_that_is_down() -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
                         connect_args={"connect_timeout": 1})
    relay = Relay(engine, {"bootstrap_servers": ["127.0.0.1:1"]}, nodes=["11977"])
    stop, thread = run_relay(relay)
    try:
        wait_until(lambda: relay.stats.failures >= 2, 30, "two failed rounds")
        assert thread.is_alive(), "a database error killed the relay"
        assert relay.stats.last_error is not None
        assert "OperationalError" in relay.stats.last_error
    finally:
        stop.set()
        thread.join(30)


def test_two_relays_never_publish_the_same_node_together(
        store: Engine, keys_dir: Path, kafka_config: dict[str, Any], prefix: str) -> None:
    simulate(store, keys_dir, scale=0.05)
    expected = heads(store)
    relays = [Relay(store, kafka_config, topic_prefix=prefix, holder=name, batch_size=100)
              for name in ("a", "b")]
    running = [run_relay(r) for r in relays]
    wait_until(lambda: count_unpublished(store) == 0, 60, "the outbox to drain")
    for stop, thread in running:
        stop.set()
        thread.join(30)
    records = read_all(kafka_config, topics_of(prefix), sum(expected.values()))
    assert assert_complete_and_ordered(records, expected) == 0
    assert relays[0].stats.published + relays[1].stats.published == len(records)


def test_relay_backs_off_until_the_broker_appears(
        store: Engine, keys_dir: Path, tmp_path: Path, settings: Any) -> None:
    simulate(store, keys_dir, scale=0.01)
    port = free_port()
    config = settings.kafka_config(f"127.0.0.1:{port}")
    relay = Relay(store, {**config, "bootstrap_timeout_ms": 1000})
    stop, thread = run_relay(relay)
    try:
        wait_until(lambda: relay.stats.failures >= 2, 60, "the relay to fail and retry")
        assert count_unpublished(store) > 0
        with EmbeddedBroker(port, log_path=tmp_path / "tansu.log"):
            admin = admin_client(config)
            ensure_topics(admin, topic_specs())
            admin.close()
            wait_until(lambda: count_unpublished(store) == 0, 60, "the outbox to drain")
    finally:
        stop.set()
        thread.join(30)
    assert relay.stats.last_error is not None


def test_relay_marks_rows_on_both_stores(db_engine: Engine, keys_dir: Path,
                                         kafka_config: dict[str, Any], prefix: str) -> None:
    """Marking bypasses SQLAlchemy's parameter handling: the stored time must still read
    back as an aware UTC datetime, on SQLite and on PostgreSQL."""
    migrate(db_engine)
    simulate(db_engine, keys_dir, scale=0.005)
    before = datetime.now(UTC)
    relay = Relay(db_engine, kafka_config, topic_prefix=prefix)
    while relay.publish_once():
        pass
    relay.close()
    with db_engine.connect() as conn:
        rows = conn.execute(select(outbox.c.published_at, outbox.c.kafka_partition,
                                   outbox.c.kafka_offset)).all()
    assert rows and all(p is not None and o is not None for _, p, o in rows)
    for at, _, _ in rows:
        assert at.tzinfo is not None
        assert before - timedelta(seconds=1) <= at <= datetime.now(UTC)


def test_a_busy_store_holds_back_the_marks_not_the_sends(
        store: Engine, keys_dir: Path, kafka_config: dict[str, Any], prefix: str,
        tmp_path: Path) -> None:
    """While another writer holds SQLite's write lock (a node committing), a round sends
    and ends at once: its marks wait for a later round instead of the lock (they waited
    100-230 ms a round at 200 commits/s, the whole tail of commit -> snapshot). Nothing is
    sent twice meanwhile, and every mark lands once the lock is free."""
    simulate(store, keys_dir, scale=0.005)
    expected = heads(store)
    total = sum(expected.values())
    relay = Relay(store, kafka_config, topic_prefix=prefix, batch_size=max(2, total // 5))
    relay.publish_once()  # claims the leases (a write) and sends the first batch
    holder = sqlite3.connect(tmp_path / "nodes.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as a node's transaction holds it
    try:
        started = time.monotonic()
        rounds = 0
        # rounds for at most 1.5 s after the first round's acknowledgements: the relay waits
        # for the lock by design after MAX_DEFER (2 s) of deferred marks. Its look for new
        # nodes every 2 s is a write that waits too: not due during this test
        relay._next_claim = started + 60
        while time.monotonic() - started < 1.5 and relay.publish_once() and rounds < 20:
            rounds += 1
        held_for = time.monotonic() - started
        # one round that waited for the lock would wait BUSY_TIMEOUT_MS (30 s)
        assert held_for < 1.5 + budget(2.0), f"a round waited {held_for:.1f} s for the lock"
        assert rounds >= 1 and relay.stats.deferred_marks >= rounds
        unmarked = holder.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        assert unmarked.fetchone()[0] == total  # nothing could be marked
        with reader(store) as conn:  # a try that failed left the normal wait in place
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == BUSY_TIMEOUT_MS
        sent = read_all(kafka_config, topics_of(prefix), total)
        assert assert_complete_and_ordered(sent, expected) == 0  # all out, none twice
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    while relay.publish_once():
        pass
    relay.close()
    assert count_unpublished(store) == 0
    assert assert_complete_and_ordered(
        read_all(kafka_config, topics_of(prefix), total), expected) == 0

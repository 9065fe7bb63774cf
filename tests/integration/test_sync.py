"""The sync consumers against a real broker (DESIGN.md G1, G3, G5, G6): replicas of both
sites (SQLite and PostgreSQL) and of communes equal the originating nodes' own stores row for
row; forged and tampered events are rejected, reported and change nothing; kill -9 mid-batch
applies nothing twice; a commune offline for three days catches up into its own days."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka.errors import KafkaTimeoutError
from sqlalchemy import Engine, func, select
from sqlalchemy import exc as sa_exc

from consumers.sync.replica import Applied, Replica
from consumers.sync.replica import events as replica_events
from infra.db import make_engine
from infra.node_tables import outbox, state_to_row
from producers.migrate import open_store
from producers.relay import Relay
from producers.service import DossierService
from producers.sim.simulator import Simulator
from schemas.codec import decode, encode
from schemas.counters import recount
from schemas.deadletter import parse
from schemas.events import LOCAL_TZ, AnyEvent
from schemas.fold import fold
from schemas.keys import Keyring, init_keystore
from schemas.nodes import node_ids
from schemas.topics import DEAD_LETTERS
from streams.reader import read_to_end
from tests.conftest import Broker, unique_prefix
from tests.factories import Chain
from tests.integration.test_broker import MOTCUA, cli_env
from tests.integration.test_streams import wait_for_snapshots
from tests.streams_support import (
    WorkerProcess,
    Workload,
    produce,
    provision,
    published_ends,
    simulate,
    store_view,
    three_receipts,
    wait_for_positions,
)
from tests.sync_support import (
    SyncProcess,
    node_calls,
    node_rows,
    sync_thread,
    wait_applied,
)
from tests.timing import budget, poll_until

COMMUNE = "11953"  # Phường Phố Hiến: busy enough to have dossiers on any simulated day


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    """1/7 at 1/20 scale: ~340 dossiers and their events, hotline calls included."""
    return simulate(tmp_path_factory.mktemp("day"), date(2025, 7, 1), date(2025, 7, 1),
                    scale=0.05)


@pytest.fixture
def prefix() -> str:
    return unique_prefix("sy")


def test_both_sites_and_a_commune_converge_row_for_row_after_a_day(
        tmp_path: Path, kafka_config: dict[str, Any], broker: Broker, pg_fresh: Engine,
        day: Workload, prefix: str) -> None:
    provision(kafka_config, prefix)
    ends = produce(kafka_config, prefix, day.records)
    store = f"sqlite:///{day.keys_dir.parent / 'nodes.db'}"
    phohien = Replica.open(make_engine(f"sqlite:///{tmp_path / 'site-phohien.db'}"), "site-phohien")
    thaibinh = Replica.open(pg_fresh, "site-thaibinh")
    commune = Replica.open(make_engine(f"sqlite:///{tmp_path / f'{COMMUNE}.db'}"), COMMUNE)
    with sync_thread(phohien, kafka_config, day.keys_dir, prefix, max_records=300) as a, \
            sync_thread(thaibinh, kafka_config, day.keys_dir, prefix) as b, \
            sync_thread(commune, kafka_config, day.keys_dir, prefix) as c:
        for replica in (phohien, thaibinh, commune):
            wait_applied(replica, ends, 120)
    for consumer in (a, b, c):
        assert consumer.dead == 0 and not consumer.applied.refused

    everything = node_rows(store)
    assert len(everything) > 200
    assert phohien.rows() == everything
    assert thaibinh.rows() == everything
    calls = node_calls(store)
    assert calls and phohien.call_rows() == calls and thaibinh.call_rows() == calls
    mine = node_rows(store, COMMUNE)
    assert 0 < len(mine) < len(everything)
    assert commune.rows() == mine and commune.call_rows() == []
    assert phohien.gaps() == thaibinh.gaps() == commune.gaps() == {}

    # `motcua sync status` at rest: zero lag, no gaps, the rows counted
    out = subprocess.run(
        [*MOTCUA, "sync", "status", "--node", "site-phohien", "--json",
         "--db", f"sqlite:///{tmp_path}/{{node}}.db"],
        env=cli_env(MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap, MOTCUA_TOPIC_PREFIX=prefix),
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    [status] = json.loads(out.stdout)
    assert status["events_behind"] == 0 and status["seconds_behind"] == 0
    assert status["gaps"] == {} and status["dossiers"] == len(everything)
    assert status["events"] == len(day.records) and status["last_error"] is None

    # a restart seeks to the stored positions: nothing is read twice
    with sync_thread(phohien, kafka_config, day.keys_dir, prefix) as again:
        deadline = time.monotonic() + budget(30)
        while again.polls < 5:  # it has checked its positions and is polling at the end
            assert time.monotonic() < deadline, again.last_error
            time.sleep(0.1)
    assert again.applied.stored == 0 and again.applied.duplicates == 0
    assert again.last_error is None
    assert phohien.rows() == everything


def test_forged_and_tampered_events_are_rejected_reported_and_change_nothing(
        tmp_path: Path, kafka_config: dict[str, Any], broker: Broker, day: Workload,
        prefix: str) -> None:
    """Sync and the stream worker refuse the same events: content changed after signing,
    another node's signature, and (each signed with the origin's real key) a fork and a
    broken link (G6); neither the rows nor any figure moves."""
    keys = Keyring(day.keys_dir)
    heads: dict[str, tuple[int, str]] = {}
    received = None
    for _, _, value in day.records:
        e = decode(value)
        heads[e.origin] = (e.origin_seq, e.hash)
        if received is None and e.origin == COMMUNE and e.type == "dossier.received":
            received = value
    assert received is not None
    victim = decode(received)
    seq, head = heads[COMMUNE]
    at = victim.occurred_at + timedelta(hours=1)

    def event(origin_seq: int, prev_hash: str, signer: str) -> tuple[bytes, bytes]:
        # a new dossier received: counted if taken, so a figure moves if it gets through
        dossier = f"D-{COMMUNE}-BAD-{origin_seq}-{prev_hash[:4]}"
        chain = Chain(COMMUNE, keys(signer))
        chain.seq, chain.head = origin_seq - 1, prev_hash
        return dossier.encode(), encode(chain.emit(
            "dossier.received", dossier, occurred_at=at, receiving_node=COMMUNE,
            due_date=(at + timedelta(days=10)).date()))

    tampered = orjson.loads(received)
    tampered["data"]["due_date"] = "2025-12-31"  # a valid value, not the one signed
    key = victim.dossier_id.encode()
    bad = [
        ("dossier-events", key, orjson.dumps(tampered)),  # content changed after signing
        ("dossier-events", *event(seq + 1, head, "12424")),  # another node's key
        ("dossier-events", *event(victim.origin_seq, victim.prev_hash, COMMUNE)),  # fork
        ("dossier-events", *event(seq + 1, "0" * 64, COMMUNE)),  # breaks the chain
        ("dossier-events", b"D-GARBAGE", b"{not json"),
    ]
    provision(kafka_config, prefix)
    ends = produce(kafka_config, prefix, day.records)
    site = Replica.open(make_engine(f"sqlite:///{tmp_path / 'site.db'}"), "site-phohien")
    commune = Replica.open(make_engine(f"sqlite:///{tmp_path / 'commune.db'}"), COMMUNE)
    worker = WorkerProcess(tmp_path, broker.bootstrap, prefix, day.keys_dir).start()
    view = store_view(worker.store_url, day.keys_dir, prefix)
    try:
        with sync_thread(site, kafka_config, day.keys_dir, prefix) as a, \
                sync_thread(commune, kafka_config, day.keys_dir, prefix):
            # the bad events come once the genuine ones are in: which of two events at one
            # place is read first decides which one is the fork (schemas/chain.py)
            for replica in (site, commune):
                wait_applied(replica, ends, 120)
            wait_for_positions(view, ends, 120, worker)
            for tp, end in produce(kafka_config, prefix, bad).items():
                ends[tp] = max(ends.get(tp, 0), end)
            for replica in (site, commune):
                wait_applied(replica, ends, 120)
            wait_for_positions(view, ends, 120, worker)
            assert view.counters() == recount([decode(v) for _, _, v in day.records])
    finally:
        worker.stop()
    store = f"sqlite:///{day.keys_dir.parent / 'nodes.db'}"
    assert site.rows() == node_rows(store)
    assert commune.rows() == node_rows(store, COMMUNE)
    assert a.dead == len(bad) and len(a.applied.refused) == 2
    assert site.status()["dead_letters"] == len(bad) and site.status()["refused"] == 2
    last_error = str(site.status()["last_error"])

    letters: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in read_to_end(kafka_config, prefix + DEAD_LETTERS):
        body = parse(rec.value)
        letters[body["stage"]].append(body)
    for stage in ("sync:site-phohien", f"sync:{COMMUNE}"):
        got = letters[stage]
        assert sorted(b["original"] for b in got) == sorted(v for _, _, v in bad)
        reasons = " | ".join(b["reason"] for b in got)
        for word in ("hash", "signature", "fork", "chain break", "not JSON"):
            assert word in reasons, reasons
        assert all(b["source"]["topic"] == prefix + "dossier-events" for b in got)
    # the status names one of the site's own dead letters exactly: a fork or chain break
    # refused by the replica, or a record the consumer rejected (whichever came last)
    site_letters = letters["sync:site-phohien"]
    said = {f"refused: {b['reason']}" for b in site_letters
            if "fork" in b["reason"] or "chain break" in b["reason"]}
    said |= {f"rejected: {b['reason']}" for b in site_letters
             if "fork" not in b["reason"] and "chain break" not in b["reason"]}
    assert last_error in said, (last_error, said)

    by_worker = {b["original"]: b["reason"] for b in letters["streams"]}
    assert sorted(by_worker) == sorted(v for _, _, v in bad)
    for value, word in zip([v for _, _, v in bad],
                           ("hash", "signature", "fork", "chain break", "not JSON"),
                           strict=True):
        assert word in by_worker[value], (word, by_worker[value])


def test_kill_9_mid_batch_then_restart_applies_each_event_once(
        tmp_path: Path, kafka_config: dict[str, Any], broker: Broker, prefix: str) -> None:
    work = simulate(tmp_path / "sim", date(2025, 7, 1), date(2025, 7, 3), scale=0.05)
    provision(kafka_config, prefix)
    ends = produce(kafka_config, prefix, work.records)
    db = f"sqlite:///{tmp_path}/{{node}}.db"
    node = "site-thaibinh"
    replica = Replica.open(make_engine(db.format(node=node)), node)
    proc = SyncProcess(tmp_path, broker.bootstrap, prefix, work.keys_dir, node, db,
                       MOTCUA_SYNC_BATCH="20").start()
    try:
        deadline = time.monotonic() + budget(60)
        while int(replica.status()["stored"]) < len(work.records) // 3:  # type: ignore[call-overload]
            assert time.monotonic() < deadline and not proc.gone(), proc.output()
            time.sleep(0.01)
        proc.kill()

        # what the replica holds is exactly what the log holds below the stored positions
        stored = replica.positions()
        below: set[tuple[str, int]] = set()
        for topic in ("dossier-events", "hotline-events"):
            for rec in read_to_end(kafka_config, prefix + topic):
                if rec.offset < stored.get((rec.topic, rec.partition), 0):
                    e = decode(rec.value)
                    below.add((e.origin, e.origin_seq))
        with replica.engine.connect() as conn:
            held = {(o, int(s)) for o, s in conn.execute(
                select(replica_events.c.origin, replica_events.c.origin_seq))}
            count = conn.execute(select(func.count()).select_from(replica_events)).scalar()
        assert 0 < len(held) < len(work.records)
        assert held == below and count == replica.status()["stored"]

        proc.start()  # a new log: the output below is this run's alone
        wait_applied(replica, ends, 120, proc.gone)
    finally:
        proc.stop()
    assert replica.rows() == node_rows(f"sqlite:///{tmp_path / 'sim' / 'nodes.db'}")
    assert replica.status()["stored"] == len(work.records)
    # nothing polled twice: the status line this run printed last says so
    last = [line for line in proc.output().splitlines() if "events stored" in line][-1]
    assert re.search(rf"^SIG\w+; sync {node}: [\d,]+ events stored, 0 duplicates, ", last), last


def test_a_commune_offline_for_three_days_catches_up_into_its_own_days(
        tmp_path: Path, kafka_config: dict[str, Any], broker: Broker, pg_fresh: Engine,
        prefix: str) -> None:
    """A commune's link goes down at noon on 1/7 and comes back after 3/7 (G1, G3): its
    clerks keep working into its own store. The rest of the province flows meanwhile and
    the boards show it; when the link comes back, the commune's three days of events land
    in their own days (by when they happened, not when they arrived), on the worker's
    counters and on the counters topic the boards read, and both sites hold its rows."""
    keys = tmp_path / "keys"
    init_keystore(keys, node_ids())
    store = open_store(f"sqlite:///{tmp_path / 'nodes.db'}")
    provision(kafka_config, prefix)
    others = [n for n in node_ids() if n != COMMUNE]
    stop_all, stop_commune = threading.Event(), threading.Event()
    main_relay = Relay(store, kafka_config, nodes=others, topic_prefix=prefix)
    commune_relay = Relay(store, kafka_config, nodes=[COMMUNE], topic_prefix=prefix)
    threads = [threading.Thread(target=main_relay.run, args=(stop_all,), daemon=True),
               threading.Thread(target=commune_relay.run, args=(stop_commune,), daemon=True)]
    for t in threads:
        t.start()
    worker = WorkerProcess(tmp_path, broker.bootstrap, prefix, keys).start()
    view = store_view(worker.store_url, keys, prefix)
    phohien = Replica.open(make_engine(f"sqlite:///{tmp_path / 'site-phohien.db'}"), "site-phohien")
    thaibinh = Replica.open(pg_fresh, "site-thaibinh")
    noon = datetime(2025, 7, 1, 12, 0, tzinfo=LOCAL_TZ)
    days = ["2025-07-01", "2025-07-02", "2025-07-03"]
    scope = f"commune:{COMMUNE}"
    try:
        with sync_thread(phohien, kafka_config, keys, prefix) as a, \
                sync_thread(thaibinh, kafka_config, keys, prefix) as b:
            sim = Simulator(DossierService(store, Keyring(keys)), date(2025, 7, 1),
                            date(2025, 7, 3), scale=0.05, speed=14400)  # 6 s a day
            sim_thread = threading.Thread(target=sim.run, daemon=True)
            sim_thread.start()
            while sim_thread.is_alive() and (sim.sim_time is None or sim.sim_time < noon):
                time.sleep(0.002)
            stop_commune.set()  # the commune's link goes down; its clerks keep working
            threads[1].join(30)
            sim_thread.join(300)
            assert not sim_thread.is_alive()

            # the rest of the province is through; the commune's three days are its backlog
            poll_until(lambda: _unpublished(store) == _unpublished(store, COMMUNE), 60,
                       "the other nodes' outboxes to drain")
            late = [e for e in _all_events(store, published=False) if e.origin == COMMUNE]
            late_days = {_local_day(e) for e in late}
            assert {"2025-07-02", "2025-07-03"} <= late_days, late_days
            ends = published_ends(store, prefix)
            wait_for_positions(view, ends, 120, worker)
            for replica in (phohien, thaibinh):
                wait_applied(replica, ends, 120)
            before = view.counters()
            assert before == recount(_all_events(store, published=True))
            assert wait_for_snapshots(kafka_config, prefix, before) == before  # the boards
            for day in days[1:]:  # no receipt of the commune's days offline is counted yet
                assert before.get((scope, day, "received"), 0) == 0, day
            assert phohien.rows() != node_rows(store)

            # the link comes back: the backlog flows, replicas and counters are corrected
            stop_commune.clear()
            threads[1] = threading.Thread(target=commune_relay.run, args=(stop_commune,),
                                          daemon=True)
            threads[1].start()
            deadline = time.monotonic() + budget(60)
            while _unpublished(store, COMMUNE):
                assert time.monotonic() < deadline, "the commune's backlog did not flow"
                time.sleep(0.2)
            ends = published_ends(store, prefix)
            wait_for_positions(view, ends, 120, worker)
            for replica in (phohien, thaibinh):
                wait_applied(replica, ends, 120)
            after = view.counters()
            assert wait_for_snapshots(kafka_config, prefix, after) == after  # the boards
        assert phohien.rows() == thaibinh.rows() == node_rows(store)
        assert phohien.gaps() == thaibinh.gaps() == {}
        assert a.dead == b.dead == 0
        everything = _all_events(store)
        assert after == recount(everything)
        # each late receipt moved its own day's figure, at the commune and the province,
        # and no other day's (a count by the day it happened, not by arrival)
        for day in days:
            arrived = sum(1 for e in late if e.type == "dossier.received"
                          and _local_day(e) == day)
            for where in (scope, "province"):
                moved = (after.get((where, day, "received"), 0)
                         - before.get((where, day, "received"), 0))
                assert moved == arrived, (where, day, moved, arrived)
            assert after[(scope, day, "received")] == sum(
                1 for e in everything if e.type == "dossier.received" and e.origin == COMMUNE
                and _local_day(e) == day), day
        assert all(after.get((scope, day, "received"), 0) > 0 for day in days[1:])
    finally:
        stop_all.set()
        stop_commune.set()
        worker.stop()
        for t in threads:
            t.join(30)
        store.dispose()


def _local_day(event: AnyEvent) -> str:
    return event.occurred_at.astimezone(LOCAL_TZ).date().isoformat()


def _unpublished(store: Engine, node: str | None = None) -> int:
    """Events in the outbox not published yet: a node's, or every node's."""
    query = select(func.count()).select_from(outbox).where(outbox.c.published_at.is_(None))
    if node is not None:
        query = query.where(outbox.c.origin == node)
    with store.connect() as conn:
        return int(conn.execute(query).scalar_one())


def _all_events(store: Engine, published: bool | None = None) -> list[AnyEvent]:
    """The node store's events: all, or only those published (or not) yet."""
    query = select(outbox.c.body)
    if published is not None:
        sent = outbox.c.published_at.is_not(None)
        query = query.where(sent if published else ~sent)
    with store.connect() as conn:
        return [decode(bytes(b)) for b in conn.execute(query).scalars()]


class Faulty(Replica):
    """A replica whose database fails on purpose: calls 2 and 3 of ``apply`` fail inside
    the transaction, after the events went in, as if the dead letters were not
    acknowledged (transient: rolled back, retried); any batch holding ``refused_id``
    fails as if the database refused one of its values (a data error)."""

    def __init__(self, engine: Engine, node: str, refused_id: str) -> None:
        super().__init__(engine, node)
        self.calls = 0
        self.refused_id = refused_id

    def apply(self, batch: Sequence[AnyEvent], moved: Any = None, **kw: Any) -> Applied:
        self.calls += 1
        if self.calls in (2, 3):
            def fail(_refusals: object) -> None:
                raise KafkaTimeoutError("injected: dead letters not acknowledged")
            kw["before_commit"] = fail
        if any(e.event_id == self.refused_id for e in batch):
            raise sa_exc.DataError("INSERT", {}, ValueError("injected: value refused"))
        return super().apply(batch, moved, **kw)


def test_failed_applies_are_retried_and_a_refused_record_is_isolated(
        tmp_path: Path, kafka_config: dict[str, Any], day: Workload, prefix: str) -> None:
    events = [decode(v) for _, _, v in day.records]
    refused = next(e for e in events if e.type == "dossier.status_changed")
    provision(kafka_config, prefix)
    ends = produce(kafka_config, prefix, day.records)
    engine = Replica.open(make_engine(f"sqlite:///{tmp_path / 'r.db'}"), "site-phohien").engine
    replica = Faulty(engine, "site-phohien", refused.event_id)
    with sync_thread(replica, kafka_config, day.keys_dir, prefix, max_records=200) as c:
        wait_applied(replica, ends, 120)
    assert replica.calls > 5 and c.dead == 1
    assert c.applied.duplicates == 0  # the rolled-back polls came again, as new

    # every record below the positions is held, except the one refused: nothing lost to
    # the failed attempts, and only that dossier differs from the nodes
    by_dossier: dict[str, list[AnyEvent]] = defaultdict(list)
    for e in events:
        if e.event_id != refused.event_id and not e.type.startswith("hotline."):
            by_dossier[e.dossier_id].append(e)
    want = [state_to_row(fold(evs)) for _, evs in sorted(by_dossier.items())]  # type: ignore[arg-type]
    assert replica.rows() == want
    assert replica.status()["stored"] == len(events) - 1
    last = max(e.origin_seq for e in events if e.origin == refused.origin)
    assert replica.gaps() == ({} if refused.origin_seq == last else
                              {refused.origin: [(refused.origin_seq, refused.origin_seq)]})
    [letter] = [parse(r.value) for r in read_to_end(kafka_config, prefix + DEAD_LETTERS)]
    assert "database refuses it" in letter["reason"] and "injected" in letter["reason"]
    assert letter["original"] == encode(refused)


def test_positions_from_another_log_are_detected_and_the_partition_read_again(
        tmp_path: Path, kafka_config: dict[str, Any], day: Workload, prefix: str) -> None:
    """The replica holds half the events and positions that claim a whole log, but the
    log under those topic names is another one (same events, another order: a restarted
    in-memory broker). Trusting the positions would skip the other half for good."""
    provision(kafka_config, prefix)
    ends = produce(kafka_config, prefix, list(reversed(day.records)))
    replica = Replica.open(make_engine(f"sqlite:///{tmp_path / 'r.db'}"), "site-phohien")
    half = [decode(v) for _, _, v in day.records[:len(day.records) // 2]]
    stale = {tp: end + 5 if i % 2 else end for i, (tp, end) in enumerate(sorted(ends.items()))}
    replica.apply(half, stale, digests=dict.fromkeys(stale, "0" * 64))
    with sync_thread(replica, kafka_config, day.keys_dir, prefix) as c:
        deadline = time.monotonic() + budget(120)  # the stale positions are at or past the ends
        while replica.positions() != ends or replica.status()["stored"] != len(day.records):
            assert time.monotonic() < deadline, (replica.status(), c.last_error)
            time.sleep(0.2)
    assert c.applied.duplicates == len(half)  # read again: the held half, as duplicates
    assert replica.rows() == node_rows(f"sqlite:///{day.keys_dir.parent / 'nodes.db'}")
    assert "another log" in str(replica.status()["last_error"])


def test_up_keeps_a_replica_of_the_same_history_and_empties_one_of_another(
        tmp_path: Path) -> None:
    from infra.cli.up import _reset_replicas
    from infra.settings import load_settings

    settings = load_settings(data_dir=tmp_path / "var", sync_nodes="site-phohien")
    keys = tmp_path / "keys"
    init_keystore(keys, ["11977", "site-phohien"])

    first = three_receipts(tmp_path / "first.db", keys)
    url, _ = settings.replica_url("site-phohien")
    (tmp_path / "var" / "replicas").mkdir(parents=True)
    replica = Replica.open(make_engine(url), "site-phohien")
    replica.apply(_all_events(first), {("dossier-events", 0): 3})
    rows = replica.rows()
    said: list[str] = []
    _reset_replicas(settings, first, said.append)
    assert replica.rows() == rows and replica.positions() == {} and not said

    # new node stores: the same places, new events
    second = three_receipts(tmp_path / "second.db", keys)
    replica.apply([], {("dossier-events", 0): 3})
    _reset_replicas(settings, second, said.append)
    assert replica.rows() == [] and replica.positions() == {} and "emptied" in said[0]


class Refusing(Replica):
    """A replica whose database refuses every event (a broken column, say)."""

    def apply(self, batch: Sequence[AnyEvent], moved: Any = None, **kw: Any) -> Applied:
        if batch:
            raise sa_exc.DataError("INSERT", {}, ValueError("injected: column broken"))
        return super().apply(batch, moved, **kw)


def test_a_database_that_refuses_everything_dead_letters_nothing(
        tmp_path: Path, kafka_config: dict[str, Any], day: Workload, prefix: str) -> None:
    provision(kafka_config, prefix)
    produce(kafka_config, prefix, day.records)
    replica = Refusing.open(make_engine(f"sqlite:///{tmp_path / 'r.db'}"), "site-phohien")
    with sync_thread(replica, kafka_config, day.keys_dir, prefix) as c:
        deadline = time.monotonic() + budget(60)
        while "refuses consecutive records" not in str(c.last_error):
            assert time.monotonic() < deadline, c.last_error
            time.sleep(0.1)
    assert c.dead == 0 and replica.positions() == {}  # retried and reported, not skipped
    assert "refuses consecutive" in str(replica.status()["last_error"])
    assert list(read_to_end(kafka_config, prefix + DEAD_LETTERS)) == []

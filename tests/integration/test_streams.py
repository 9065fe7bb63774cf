"""The stream worker against a real broker: exact counters (a batch recount of the same
events by the same pure functions), on the counters topic and in its store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from schemas.snapshot import totals
from schemas.topics import COUNTERS
from streams.reader import read_snapshots
from tests.conftest import Broker, unique_prefix
from tests.streams_support import (
    WorkerProcess,
    Workload,
    produce,
    provision,
    simulate,
    store_view,
    wait_for_positions,
)
from tests.timing import Deadline, budget, poll_until


@pytest.fixture(scope="session")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    """Three simulated days at 1/10 scale: ~2,000 dossiers, ~10,000 events, every
    lifecycle the simulator knows, signed by the nodes' own keys."""
    return simulate(tmp_path_factory.mktemp("workload"), date(2025, 7, 1), date(2025, 7, 3),
                    scale=0.1)


@pytest.fixture
def prefix() -> str:
    return unique_prefix("st")


@pytest.fixture
def worker(tmp_path: Path, broker: Broker, prefix: str, workload: Workload
           ) -> Iterator[WorkerProcess]:
    w = WorkerProcess(tmp_path, broker.bootstrap, prefix, workload.keys_dir)
    yield w
    w.stop()


def wait_for_snapshots(kafka_config: dict[str, Any], prefix: str,
                       expected: dict[Any, int], timeout: float = 30.0) -> dict[Any, int]:
    """The counters topic's totals once they equal ``expected``, or as they are when
    ``budget(timeout)`` runs out (tests/timing.py)."""
    import time
    deadline = Deadline(timeout, "the snapshots")
    while True:
        got = totals(read_snapshots(kafka_config, prefix + COUNTERS))
        if got == expected or deadline.expired():
            return got
        time.sleep(0.5)


def test_counters_equal_a_batch_recount(kafka_config: dict[str, Any], prefix: str,
                                        workload: Workload, worker: WorkerProcess) -> None:
    provision(kafka_config, prefix)
    ends = produce(kafka_config, prefix, workload.records)
    worker.start()
    view = store_view(worker.store_url, workload.keys_dir, prefix)
    wait_for_positions(view, ends, 120, worker)
    expected = workload.expected()
    assert expected[("province", "2025-07", "received")] > 1000
    assert view.counters() == expected
    assert wait_for_snapshots(kafka_config, prefix, expected) == expected


def test_offsets_committed_ahead_of_the_store_lose_nothing(
        kafka_config: dict[str, Any], prefix: str, workload: Workload,
        worker: WorkerProcess) -> None:
    """The store's positions, not the group's committed offsets, say where the worker
    reads. Here the group has committed every partition's end (as a batch acknowledged
    but not stored leaves it) and the store is empty: the worker must still fold it all.
    faust seeks to committed offsets after each rebalance; without the worker's seek to
    its store after that, it would wait at the end for records that never come."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    provision(kafka_config, prefix)
    ends = produce(kafka_config, prefix, workload.records)
    group = KafkaConsumer(group_id=f"{prefix}motcua-streams", enable_auto_commit=False,
                          **kafka_config)
    try:
        group.commit({TopicPartition(topic, partition): OffsetAndMetadata(end, "", -1)
                      for (topic, partition), end in ends.items()})
    finally:
        group.close()
    worker.start()
    view = store_view(worker.store_url, workload.keys_dir, prefix)
    wait_for_positions(view, ends, 120, worker)
    assert view.counters() == workload.expected()


def applied(view: Any) -> int:
    return sum(offset for offset, _ in view.positions().values())


def wait_until(predicate: Any, timeout: float, what: str, worker: WorkerProcess | None = None
               ) -> None:
    """Until ``predicate()``, within ``budget(timeout)``; a worker that exits meanwhile
    fails it at once."""
    def done() -> bool:
        if worker is not None and not worker.alive():
            raise AssertionError(f"worker exited while waiting for {what}: {worker.output()}")
        return bool(predicate())
    poll_until(done, timeout, what, interval=0.05,
               detail=(lambda: worker.output()) if worker is not None else None)


def last_assignment(worker: WorkerProcess, topic: str) -> set[int] | None:
    """The ``topic`` partitions of the worker's last logged assignment (its INFO line
    ``assigned [((topic, partition), offset), ...]``), or None before the first."""
    import ast
    import re
    found = re.findall(r"motcua\.streams: assigned (\[.*\])", worker.log.read_text(
        errors="replace"))
    if not found:
        return None
    return {p for (t, p), _ in ast.literal_eval(found[-1]) if t == topic}


def split_between(topic: str, partitions: int, *workers: WorkerProcess) -> bool:
    """Each worker's last assignment holds some of ``topic``'s partitions, no two share
    one, and together they hold all of them."""
    for w in workers:
        if not w.alive():
            raise AssertionError(f"worker exited before the partitions were shared: "
                                 f"{w.output()}")
    shares = [last_assignment(w, topic) for w in workers]
    if any(not s for s in shares):
        return False
    held = [p for s in shares if s for p in s]
    return len(held) == len(set(held)) == partitions


def test_kill_9_mid_stream_and_restart_is_exact(tmp_path: Path, broker: Broker,
                                                kafka_config: dict[str, Any], prefix: str,
                                                workload: Workload) -> None:
    """Killed three times while folding (small batches: many commits to land between),
    restarted each time on the same store: the counters still equal the recount."""
    provision(kafka_config, prefix)
    ends = produce(kafka_config, prefix, workload.records)
    total = sum(ends.values())
    w = WorkerProcess(tmp_path, broker.bootstrap, prefix, workload.keys_dir,
                      MOTCUA_STREAMS_BATCH="100")
    view = store_view(w.store_url, workload.keys_dir, prefix)
    kills = []
    try:
        for fraction in (0.15, 0.4, 0.7):
            w.start()
            wait_until(lambda f=fraction: applied(view) >= total * f, 120,
                       f"{fraction:.0%} applied", w)
            w.kill()
            kills.append(applied(view))
        w.start()
        wait_for_positions(view, ends, 120, w)
    finally:
        w.stop()
    assert kills == sorted(kills) and kills[-1] < total, kills  # really killed mid-stream
    assert view.counters() == workload.expected()


def test_two_workers_share_six_partitions_and_one_takes_over(
        tmp_path: Path, broker: Broker, kafka_config: dict[str, Any], prefix: str,
        workload: Workload, pg_admin: Any, settings: Any) -> None:
    """Two workers on one PostgreSQL store; one is killed mid-stream: the survivor is given
    its partitions, resumes from the stored positions, and the counters are exact."""
    import uuid

    from sqlalchemy import text
    schema = f"motcua_streams_{uuid.uuid4().hex[:10]}"
    with pg_admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{settings.test_pg_url}?options=-csearch_path%3D{schema}"
    provision(kafka_config, prefix, dossier_partitions=6)
    w1 = WorkerProcess(tmp_path, broker.bootstrap, prefix, workload.keys_dir, name="w1",
                       store_url=url, MOTCUA_STREAMS_BATCH="50")
    w2 = WorkerProcess(tmp_path, broker.bootstrap, prefix, workload.keys_dir, name="w2",
                       store_url=url, MOTCUA_STREAMS_BATCH="50")
    view = store_view(url, workload.keys_dir, prefix)
    try:
        # The records go in only once the group has split the partitions between the two:
        # a worker that joins late would otherwise find its share already folded by the
        # first (it did, in a CI run on Kafka) and never fold anything.
        w1.start("--loglevel", "INFO")
        w2.start("--loglevel", "INFO")
        wait_until(lambda: split_between(prefix + "dossier-events", 6, w1, w2), 120,
                   "the two workers to share the partitions", w1)
        ends = produce(kafka_config, prefix, workload.records)
        total = sum(ends.values())

        def owners() -> set[str]:
            from streams.tables import positions
            with view.engine.connect() as conn:
                return {r.worker for r in conn.execute(positions.select())}
        wait_until(lambda: len(owners()) >= 2 and applied(view) >= total * 0.3, 120,
                   "both workers folding", w1)
        w1.kill()
        killed_at = applied(view)
        at_kill = {tp: offset for tp, (offset, _) in view.positions().items()}
        wait_for_positions(view, ends, 120, w2)
        from streams.tables import positions
        with view.engine.connect() as conn:
            final = {r.partition: r.worker for r in conn.execute(
                positions.select().where(positions.c.topic == prefix + "dossier-events"))}
    finally:
        w1.stop()
        w2.stop()
        view.engine.dispose()
    assert killed_at < total
    # the survivor finished every partition left unfinished when the other was killed (one
    # the killed worker had already finished keeps its name)
    unfinished = {p for (topic, p), end in ends.items() if topic == prefix + "dossier-events"
                  and at_kill.get((topic, p), 0) < end}
    assert len(final) == 6 and unfinished
    assert w2.proc is not None
    assert all(final[p].endswith(f":{w2.proc.pid}") for p in unfinished), final
    assert view.counters() == workload.expected()
    with pg_admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def test_duplicated_reordered_and_late_events_count_once_in_their_own_day(
        tmp_path: Path, kafka_config: dict[str, Any], prefix: str, workload: Workload,
        worker: WorkerProcess) -> None:
    """The log shuffled with 15% duplicates; one commune's first day held back (offline) and
    delivered, shuffled and duplicated too, after the rest was counted."""
    import random

    import orjson
    rng = random.Random(11)
    first = [r for r in workload.records if r[0] == "dossier-events"]
    commune = orjson.loads(first[0][2])["origin"]
    late = [r for r in workload.records
            if orjson.loads(r[2])["origin"] == commune
            and orjson.loads(r[2])["occurred_at"].startswith("2025-07-01")]
    on_time = [r for r in workload.records if r not in late]
    assert len(late) > 5

    def messy(records: list[Any]) -> list[Any]:
        out = records + rng.sample(records, len(records) * 15 // 100)
        rng.shuffle(out)
        return out

    provision(kafka_config, prefix)
    view = store_view(worker.store_url, workload.keys_dir, prefix)
    worker.start()
    wait_for_positions(view, produce(kafka_config, prefix, messy(on_time)), 120, worker)
    before = view.counters()
    from schemas.codec import decode
    from schemas.counters import recount
    assert before == recount(decode(v) for _, _, v in on_time)

    wait_for_positions(view, produce(kafka_config, prefix, messy(late)), 120, worker)
    after = view.counters()
    assert after == workload.expected()
    scope = f"commune:{commune}"
    received_late = sum(1 for _, _, v in late if b'"type":"dossier.received"' in v)
    assert received_late > 0
    for key in ((scope, "2025-07-01", "received"), ("province", "2025-07-01", "received"),
                (scope, "2025-07", "received")):
        assert after.get(key, 0) - before.get(key, 0) == received_late, key
    for day in ("2025-07-02", "2025-07-03"):
        assert after.get((scope, day, "received"), 0) == before.get((scope, day, "received"), 0)


def test_poison_messages_go_to_dead_letters_and_the_rest_is_counted(
        tmp_path: Path, kafka_config: dict[str, Any], prefix: str, workload: Workload,
        worker: WorkerProcess) -> None:
    from nacl.signing import SigningKey

    from schemas.deadletter import parse
    from schemas.keys import Keyring
    from schemas.topics import DEAD_LETTERS
    from tests.factories import Chain
    from tests.integration.test_relay import read_all

    site = Keyring(workload.keys_dir)("site-phohien")
    forged = Chain("11977", SigningKey.generate()).emit("dossier.received", "D-FORGED-1")
    stranger = Chain("site-nowhere").emit("dossier.received", "D-STRANGER-1")
    misfiled = Chain("site-phohien", site).emit("hotline.call_received", "C-MISFILED-1")
    mis_keyed = Chain("site-phohien", site).emit("dossier.received", "D-MISKEYED-1")
    from schemas.codec import encode
    poison: list[tuple[str, bytes | None, bytes | None, str]] = [
        ("dossier-events", b"D-GARBAGE", b"\x00\xffnot json at all", "not valid UTF-8"),
        ("dossier-events", b"D-FORGED-1", encode(forged), "signature does not verify"),
        ("dossier-events", b"D-STRANGER-1", encode(stranger), "has no key in the registry"),
        ("dossier-events", b"C-MISFILED-1", encode(misfiled), "does not belong on"),
        ("dossier-events", b"D-OTHER", encode(mis_keyed), "is not the subject id"),
        ("dossier-events", b"D-TOMBSTONE", None, "no value"),
        ("hotline-events", b"x", b'{"type": "hotline.call_received"}',
         "schema_version: required field is missing"),
    ]
    records: list[tuple[str, bytes | None, bytes | None]] = list(workload.records)
    step = len(records) // (len(poison) + 1)
    for i, (topic, key, value, _) in enumerate(poison):
        records.insert((i + 1) * step, (topic, key, value))
    provision(kafka_config, prefix)
    ends = produce(kafka_config, prefix, records)
    worker.start()
    view = store_view(worker.store_url, workload.keys_dir, prefix)
    wait_for_positions(view, ends, 120, worker)
    assert view.counters() == workload.expected()
    assert sum(dead for _, dead in view.positions().values()) == len(poison)

    dead = [parse(r.value) for r in read_all(kafka_config, [prefix + DEAD_LETTERS],
                                            len(poison), timeout=30)]
    assert len(dead) == len(poison)
    by_original = {d["original"]: d for d in dead}
    for topic, _key, value, reason in poison:
        letter = by_original[value]
        assert reason in letter["reason"], (reason, letter["reason"])
        assert letter["source"]["topic"] == prefix + topic
        assert letter["stage"] == "streams"


# its own waits (600 s to fold, 60 s for snapshots) must be reachable; scaled with them
# (tests/conftest.py)
@pytest.mark.timeout(900)
def test_july_at_scale_1_gives_the_published_figures(
        tmp_path: Path, broker: Broker, kafka_config: dict[str, Any], prefix: str,
        workload: Workload, worker: WorkerProcess) -> None:
    """Every dossier.received of July 2025 at scale 1 (the plan the simulator follows), read
    back with `motcua counters` for 1/7–30/7. Signatures are not checked here (--no-verify
    halves the run; the poison test covers verification): this is about the arithmetic."""
    import json
    import subprocess

    from tests.integration.test_broker import MOTCUA, cli_env
    from tests.streams_support import received_only

    records = received_only(workload.keys_dir, date(2025, 7, 1), date(2025, 7, 30))
    assert len(records) == 201_034
    provision(kafka_config, prefix)
    ends = produce(kafka_config, prefix, records)
    worker.env["MOTCUA_STREAMS_BATCH"] = "5000"
    worker.start("--no-verify")
    # the audit archive reads the same log (one broker is enough: the archive's broker
    # handling is tested on both in test_audit.py, and this is its costliest test)
    from tests.integration.test_audit import archiver, wait_archived
    audit = archiver(tmp_path, broker, prefix, workload.keys_dir) \
        if broker.kind == "tansu" else None
    if audit is not None:
        audit.run("archive")
    wait_for_positions(store_view(worker.store_url, workload.keys_dir, prefix), ends, 600,
                       worker)

    def counters() -> dict[str, Any]:
        out = subprocess.run([*MOTCUA, "counters", "--from", "2025-07-01", "--to",
                              "2025-07-30", "--json"], capture_output=True, text=True,
                             timeout=budget(120),
                             env=cli_env(MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap,
                                                      MOTCUA_TOPIC_PREFIX=prefix))
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    wait_until(lambda: counters()["received"] == 201_034, 60, "snapshots of July")
    figures = counters()
    assert (figures["received"], figures["received.online"], figures["online_rate"]) == (
        201_034, 167_972, "83.55")
    assert figures["received.in_person"] + figures["received.postal"] == 201_034 - 167_972
    if audit is None:
        return
    # issue 13's "done when": the audit replay gives the same July, beside the live figures
    try:
        wait_archived(tmp_path / "var" / "archive", 201_034, 0, audit, timeout=600)
    finally:
        audit.stop()
    out = subprocess.run([*MOTCUA, "audit", "replay", "--from", "2025-07-01", "--to",
                          "2025-07-30", "--json"], capture_output=True, text=True,
                         timeout=budget(300),
                         env=audit.env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr  # 1: differs from the live
    body = json.loads(out.stdout)
    assert body["differences"] == [] and body["live"] is not None
    assert (body["replay"]["received"], body["replay"]["received.online"],
            body["replay"]["online_rate"]) == (201_034, 167_972, "83.55")


def test_broker_paused_mid_stream_the_worker_carries_on_exact(
        tmp_path: Path, broker: Broker, kafka_config: dict[str, Any], prefix: str,
        workload: Workload) -> None:
    """SIGSTOP the broker (every node of a cluster) for 15 s while the worker folds; after
    SIGCONT the rest of the log arrives: the worker is still there, and store and
    snapshots are exact."""
    import time

    provision(kafka_config, prefix)
    half = len(workload.records) // 2
    ends = produce(kafka_config, prefix, workload.records[:half])
    w = WorkerProcess(tmp_path, broker.bootstrap, prefix, workload.keys_dir,
                      MOTCUA_STREAMS_BATCH="200").start()
    try:
        view = store_view(w.store_url, workload.keys_dir, prefix)
        wait_until(lambda: applied(view) >= sum(ends.values()) * 0.3, 120, "30% folded", w)
        broker.pause()
        try:
            time.sleep(15)  # the outage itself: what is tested, not a wait to scale
            assert w.alive(), w.output()
        finally:
            broker.resume()
        for tp, end in produce(kafka_config, prefix, workload.records[half:]).items():
            ends[tp] = max(ends.get(tp, 0), end)
        wait_for_positions(view, ends, 180, w)
        expected = workload.expected()
        assert view.counters() == expected
        assert wait_for_snapshots(kafka_config, prefix, expected, timeout=60) == expected
    finally:
        w.stop()

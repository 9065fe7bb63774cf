"""The stream worker: ``motcua streams``, a faust-streaming app.

faust is the shell: the worker process, signals, the timer that publishes snapshots, and the
producer. Records come from one aiokafka consumer in the group ``<prefix>motcua-streams``,
in batches from ``getmany`` (faust's own consumer delivers message by message, which cost a
third of the worker's time; docs/benchmarks.md). The state is NOT in faust tables: their
changelog recovery is inexact after kill -9 on both brokers (docs/kafka.md), so exactness
cannot rest on it. Each batch is folded by ``streams.processor`` and committed to the worker
store together with the source positions; after each rebalance the consumer seeks to those
positions, and the group's committed offsets only inform lag tools.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from faust.app.base import BootStrategy

from infra.broker import free_port
from infra.db import make_engine
from infra.logs import logging_config
from infra.metrics import Metrics, serve
from schemas.keys import load_registry
from schemas.snapshot import Snapshot, event_time
from schemas.topics import COUNTERS, DEAD_LETTERS, DOSSIER_EVENTS, HOTLINE_EVENTS
from streams.processor import (
    CALLS,
    DOSSIERS,
    TP,
    Batch,
    PositionConflict,
    Processor,
    Source,
    Started,
    open_store,
)

log = logging.getLogger("motcua.streams")

SnapshotKey = tuple[TP, str, str]  # (source partition, scope, period)
MAX_ROUND = 1000  # snapshots per publishing round


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs, as plain values (built from Settings by infra/cli/bootstrap)."""

    bootstrap: str
    prefix: str
    store_url: str
    keys_path: Path | None  # None: signatures are not checked (benchmarks only)
    data_dir: Path
    batch: int = 2000  # records per transaction
    cache: int = 100_000  # folded subjects kept in memory
    snapshot_interval: float = 1.0  # seconds between two snapshots of one key
    fetch_wait_ms: int = 100
    session_timeout_ms: int = 2000
    heartbeat_interval_ms: int = 500
    # faust waits 90 s for any answer and 20 min for a produce: a broker that goes silent
    # without closing its connections (frozen VM, network partition) held the worker for
    # the whole outage, although the other replicas led within ~11 s (tests/chaos: a node
    # SIGSTOPped 120 s stalled it 126 s). A request unanswered for this long is sent again,
    # to the new leader; a snapshot or dead letter whose send fails is retried by this
    # worker (never lost). Kept well above the session timeout: a slow answer is no death.
    request_timeout_ms: int = 15_000
    replication_factor: int = 1  # faust's own topics
    security: dict[str, Any] = field(default_factory=dict)  # aiokafka connection options
    metrics_port: int | None = None  # /metrics, /healthz, /readyz (infra/metrics.py)
    log_format: str = "text"  # or "json" (infra/logs.py)
    metrics_host: str = "127.0.0.1"
    ready_lag_seconds: float = 10.0


class StreamWorker:
    def __init__(self, config: WorkerConfig, *, worker_id: str | None = None) -> None:
        self.config = config
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        prefix = self.prefix = config.prefix
        self.source = {prefix + DOSSIER_EVENTS: DOSSIERS, prefix + HOTLINE_EVENTS: CALLS}
        registry = load_registry(config.keys_path) if config.keys_path else None
        engine = make_engine(config.store_url, sqlite_sync="NORMAL")
        refolded = open_store(engine)
        self.processor = Processor(engine,
                                   self.source,
                                   registry, worker=self.worker_id,
                                   cache_size=config.cache)
        if refolded:
            log.warning("the store was built by other counter rules: emptied, refolding "
                        "every partition from offset 0")
        self.batch_size = config.batch
        self.interval = config.snapshot_interval
        self.app = self._make_app()
        self.counters_name = prefix + COUNTERS
        self.dead_topic = self.app.topic(prefix + DEAD_LETTERS, key_serializer="raw",
                                         value_serializer="raw", internal=False)
        self._lock = asyncio.Lock()  # one batch at a time, and no rebalance inside one
        self._pending_checked = 0.0
        self.dirty: set[SnapshotKey] = set()  # changed since last published
        self.last_published: dict[SnapshotKey, float] = {}
        self._sought: dict[TP, tuple[int, float]] = {}
        self.assigned: set[TP] = set()
        self.consumer: AIOKafkaConsumer | None = None
        self._begun: Started | None = None  # begun, to be finished with the next batch
        self._committed_at = 0.0
        self.metrics = Metrics("streams", ready_lag_seconds=config.ready_lag_seconds)
        self._last_ts: dict[TP, float] = {}  # the newest record's send time read per partition
        self.app.task(self._consume)
        self.app.timer(0.1, name="publish-snapshots")(self._publish_due)

    def _make_app(self) -> faust.App:
        c = self.config
        return _ShellApp(
            f"{self.prefix}motcua-streams",
            broker=[f"kafka://{h}" for h in c.bootstrap.split(",")],
            broker_credentials=_credentials(c.security),
            broker_session_timeout=c.session_timeout_ms / 1000,
            broker_heartbeat_interval=c.heartbeat_interval_ms / 1000,
            broker_request_timeout=c.request_timeout_ms / 1000,  # see WorkerConfig
            producer_request_timeout=c.request_timeout_ms / 1000,
            consumer_auto_offset_reset="earliest",
            key_serializer="raw", value_serializer="raw",
            # No tables hold state (module docstring); kept ≥ 1 as the issue asks, so a table
            # added later is not left without a standby by default.
            table_standby_replicas=1,
            # faust's own leader topic only; ours are provisioned by `motcua topics create`
            topic_replication_factor=c.replication_factor,
            topic_allow_declare=True,  # only faust's own assignor topic; ours are provisioned
            producer_acks=-1,
            stream_wait_empty=False,
            # faust binds a web server even when disabled: keep it private and off 6066.
            web_enabled=False, web_bind="127.0.0.1", web_port=free_port(),
            datadir=str(c.data_dir / "faust"),
        )

    # --- consuming -----------------------------------------------------------------------

    def _make_consumer(self) -> AIOKafkaConsumer:
        c = self.config
        return AIOKafkaConsumer(
            bootstrap_servers=c.bootstrap.split(","),
            group_id=f"{self.prefix}motcua-streams",
            client_id=f"motcua-streams-{self.worker_id}",
            enable_auto_commit=False,  # offsets follow the store (_commit_offsets)
            auto_offset_reset="earliest",
            session_timeout_ms=c.session_timeout_ms,
            heartbeat_interval_ms=c.heartbeat_interval_ms,
            request_timeout_ms=c.request_timeout_ms,
            # a fetch finding little data is answered within this wait (G7: 1 s p99)
            fetch_max_wait_ms=c.fetch_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **c.security,
        )

    async def _consume(self) -> None:
        """The worker's one consuming task: batches of up to ``streams_batch`` records from
        aiokafka's ``getmany``, folded and stored in one transaction each."""
        consumer = self.consumer = self._make_consumer()
        await consumer.start()
        consumer.subscribe(topics=sorted(self.source), listener=_Rebalance(self))
        freeze_heap()
        try:
            while True:
                # with a batch begun, take only what is fetched already: if nothing more
                # has come, the begun batch is finished at once
                wait = 0 if self._begun is not None else 200
                fetched = await consumer.getmany(timeout_ms=wait, max_records=self.batch_size)
                records = [m for messages in fetched.values() for m in messages]
                self._measure_lag(records)
                if records or self._begun is not None:
                    began = time.monotonic()
                    await self.handle(records)
                    self.metrics.batch_seconds.observe(time.monotonic() - began)
                    await self._commit_offsets()
        finally:
            await consumer.stop()

    def _measure_lag(self, records: list[Any]) -> None:
        """Lag in records (fetch high watermark minus position, over the assigned
        partitions) and in seconds (how old the newest record read of a partition still
        behind is: record timestamps are send times)."""
        self.metrics.read(len(records))
        for r in records:
            self._last_ts[(r.topic, r.partition)] = r.timestamp / 1000
        if self.consumer is None:
            return
        now = time.time()
        events, oldest = 0, now
        for tp in self.assigned:
            try:
                high = self.consumer.highwater(TopicPartition(*tp))
            except Exception:  # noqa: BLE001, S112 - revoked meanwhile: not ours now
                continue
            position = self.processor.position(tp)
            if high is None or position is None or high <= position:
                continue
            events += high - position
            # a partition behind with no record read yet: the backlog's age is not known
            oldest = min(oldest, self._last_ts.get(tp, float("-inf")))
        self.metrics.lag(events, now - oldest if events else 0.0)

    async def _commit_offsets(self) -> None:
        """Tell the group where the store is, at most once a second: only for lag tools;
        the store's positions are the truth (a rebalance seeks to them)."""
        now = time.monotonic()
        if now - self._committed_at < 1.0:
            return
        self._committed_at = now
        offsets = {TopicPartition(*tp): pos for tp in self.assigned
                   if (pos := self.processor.stored_position(tp)) is not None}
        if not offsets or self.consumer is None:
            return
        try:
            await self.consumer.commit(offsets)
        except Exception as exc:  # noqa: BLE001 - a rebalance in progress: next second
            log.info("offsets not committed: %r", exc)

    async def handle(self, records: list[Source]) -> None:
        """Begin this batch, then finish and store the one begun before it: the verifier
        threads check this batch's signatures while the main thread folds and stores the
        previous one (streams.processor.Processor.begin)."""
        async with self._lock:
            # a batch can still hold records of a partition revoked meanwhile: its new owner
            # takes them; committing them here would only make it conflict
            records = [r for r in records if (r.topic, r.partition) in self.assigned]
            begun, self._begun = self._begun, None
            if records:
                try:
                    self._begun = self.processor.begin(records)
                except Exception:  # the store is down: these records are read again
                    log.exception("could not begin a batch of %d records", len(records))
                    self.processor.forget({(r.topic, r.partition) for r in records})
            if begun is not None:
                await self._finish(begun)

    async def _finish(self, begun: Started) -> None:
        try:
            await self._store(self.processor.finish(begun))
        except PositionConflict as exc:
            log.warning("%s; re-reading positions", exc)
            tps = begun.tps | self._drop_begun()
            await self._seek_to_store(tps)
            self._reload_pending()
        except Exception:
            # Kafka or the store failed mid-batch: nothing of it is stored, so drop what
            # the cache holds ahead of the store (and the batch begun after it); the next
            # records of these partitions are then ahead of it, and the worker seeks back
            # and reads them again.
            log.exception("batch of %d partitions not stored; it will be read again",
                          len(begun.tps))
            self.metrics.error(f"a batch was not stored ({len(begun.tps)} partitions); "
                               "read again")
            self.processor.forget(begun.tps | self._drop_begun())
            await asyncio.sleep(1.0)

    def _drop_begun(self) -> set[TP]:
        """Forget the batch begun and not finished (its records are read again); returns
        its partitions."""
        begun, self._begun = self._begun, None
        if begun is None:
            return set()
        self.processor.forget(begun.tps)
        return begun.tps

    async def _store(self, batch: Batch) -> None:
        if batch.dead:
            # acknowledged BEFORE the positions move past them: a crash in between
            # repeats a dead letter (same source position), it never drops one
            futures = []
            for dead in batch.dead:
                key, value = dead.record()
                futures.append(await self.dead_topic.send(key=key, value=value))
            await asyncio.gather(*futures)
            for dead in batch.dead:
                log.warning("dead letter %s[%d]@%d: %s", dead.source_topic,
                            dead.partition, dead.offset, dead.reason)
                self.metrics.dead(dead.reason)
        began = time.monotonic()
        changed = self.processor.commit(batch)
        self.metrics.commit_seconds.observe(time.monotonic() - began)
        self.metrics.wrote(sum(end - start for start, end in batch.moves.values()))
        now = time.time()
        for origin in {link[0] for link in batch.links}:
            self.metrics.origin_seen(origin, now)
        self.dirty.update((tp, scope, period) for tp, keys in changed.items()
                          for scope, period in keys)
        for tp, offset in batch.rewinds.items():
            await self._seek(tp, offset)

    def _reload_pending(self) -> None:
        """Snapshot marks in the store for our partitions (left by a crash, or by a batch
        another worker committed just before handing a partition over)."""
        self.dirty.update(self.processor.store.pending(self.assigned))

    async def _seek(self, tp: TP, offset: int) -> None:
        last = self._sought.get(tp)
        now = time.monotonic()
        if last is not None and last[0] == offset and now - last[1] < 1.0:
            return  # already going back there; records still in flight are skipped
        self._sought[tp] = (offset, now)
        log.info("seeking %s[%d] back to %d (the store's position)", tp[0], tp[1], offset)
        try:
            assert self.consumer is not None
            self.consumer.seek(TopicPartition(*tp), offset)
        except Exception as exc:  # noqa: BLE001 - revoked meanwhile: the new owner seeks
            log.info("seek %s[%d] skipped: %r", tp[0], tp[1], exc)

    async def _seek_to_store(self, tps: Iterable[TP]) -> None:
        for tp, offset in self.processor.load_positions(tps).items():
            if tp in self.assigned:
                await self._seek(tp, offset)

    # --- rebalancing (aiokafka calls these between two getmany calls) -------------------

    async def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Seek every partition to the store's position: the store is the truth, not the
        group's committed offset (one committed for records acknowledged but not stored,
        e.g. a failed batch, would otherwise leave a quiet partition unread for ever)."""
        mine = {(tp.topic, tp.partition) for tp in assigned if tp.topic in self.source}
        async with self._lock:  # never between a batch's prepare and its commit
            self._drop_begun()
            self._forget(self.assigned - mine)
            self.assigned = mine
            self._sought.clear()
            try:
                positions = self.processor.load_positions(mine)
                self._reload_pending()
            except Exception:  # the store is down: batches will retry and seek back
                log.exception("could not read the store on assignment")
                return
            assert self.consumer is not None
            for tp, offset in positions.items():
                self.consumer.seek(TopicPartition(*tp), offset)
        log.info("assigned %s", sorted(positions.items()))

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in revoked if tp.topic in self.source}
        async with self._lock:
            self._drop_begun()
            self.assigned -= gone
            self._forget(gone)

    def _forget(self, gone: set[TP]) -> None:
        if not gone:
            return
        self.processor.forget(gone)
        self.dirty = {k for k in self.dirty if k[0] not in gone}

    # --- snapshots -----------------------------------------------------------------------

    def _behind(self, tp: TP) -> bool:
        try:
            assert self.consumer is not None
            high = self.consumer.highwater(TopicPartition(*tp))
        except Exception:  # noqa: BLE001 - not fetched yet / revoked: publish as usual
            return False
        position = self.processor.position(tp)
        return high is not None and position is not None and high - position > self.batch_size

    async def _publish_due(self) -> None:
        """Publish each changed partial at most once per interval, and within one interval
        of its change. A failure (broker or store down) keeps the keys for the next tick."""
        now = time.monotonic()
        if now - self._pending_checked > 30:  # marks a rebalance race may have left
            self._pending_checked = now
            try:
                self._reload_pending()
            except Exception:  # noqa: BLE001 - retried in 30 s
                log.warning("could not read snapshot marks from the store")
        if not self.dirty:  # every change published: the snapshots are current
            self.metrics.snapshot()
            return
        try:
            await self._publish_round()
        except Exception as exc:
            log.exception("publishing snapshots failed; retrying")
            self.metrics.error(f"publishing snapshots failed: {exc!r}")

    async def _publish_round(self) -> None:
        now = time.monotonic()
        # A round is capped so the event loop (heartbeats, fetching) never waits long; what
        # is left over goes in the next round, 100 ms later.
        # Partitions still catching up (more than a batch behind the fetch high watermark)
        # wait: their intermediate figures interest no one, and publishing every partial
        # each second would take the loop from the catch-up itself.
        behind = {tp for tp in self.assigned if self._behind(tp)}
        due = [k for k in self.dirty if k[0] not in behind
               and now - self.last_published.get(k, -1e9) >= self.interval][:MAX_ROUND]
        if not due:
            return
        self.dirty.difference_update(due)
        try:
            await self._send_snapshots(due, now)
        except BaseException:
            self.dirty.update(due)  # published next tick
            raise

    async def _send_snapshots(self, due: list[SnapshotKey], now: float) -> None:
        stamp = datetime.now(UTC).isoformat()
        sent = []
        for key, values, next_offset, version, as_of in self.processor.store.snapshots(
                k for k in due if k[0] in self.assigned):
            tp, scope, period = key
            snap = Snapshot(scope, period, (tp[0].removeprefix(self.prefix), tp[1]),
                            next_offset, values, self.worker_id, stamp, event_time(as_of))
            # the producer itself, not Topic.send: faust's per-message wrapping costs more
            # than the message when thousands of partials change at once (a catch-up)
            fut = await self.app.producer.send(
                self.counters_name, snap.key.encode(), snap.encode(), partition=None,
                timestamp=None, headers=None)
            self.last_published[key] = now
            sent.append((key, version, fut))
        if sent:
            await asyncio.gather(*(fut for _, _, fut in sent))
            self.processor.store.published_many([(k[0], k[1], k[2], v) for k, v, _ in sent])
            self.metrics.snapshot()


class _NoFaustConsumer(BootStrategy):
    """faust's consumer delivers message by message (about 60 µs each, and batches of ~200
    from ``take_events(2000)``: docs/benchmarks.md), a third of the worker's time. The app
    keeps faust's producer, timers, tasks and worker; records come from an aiokafka
    consumer of our own (``StreamWorker._consume``) in batches of ``streams_batch``."""

    enable_kafka_consumer = False


class _ShellApp(faust.App):
    BootStrategy = _NoFaustConsumer


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.worker.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.worker.on_assigned(assigned)


def freeze_heap() -> None:
    """Python's cyclic GC took 20-27% of the worker's CPU, walking the same long-lived
    objects (modules, pydantic schemas, the subject cache) again and again. Everything
    alive at start is moved out of its reach, and young collections run 20x less often;
    the fold creates few cycles, so what garbage there is goes by reference counting."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(14_000, 20, 20)


def _credentials(security: dict[str, Any]) -> Any:
    """faust's credentials from the aiokafka connection options the consumer gets too."""
    protocol = security.get("security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return None
    context = security.get("ssl_context")
    if protocol.startswith("SASL"):
        # an ssl_context makes them SASL_SSL, its absence SASL_PLAINTEXT
        return faust.SASLCredentials(username=security["sasl_plain_username"],
                                     password=security["sasl_plain_password"],
                                     mechanism=security["sasl_mechanism"],
                                     ssl_context=context)
    return faust.SSLCredentials(context)


def run(config: WorkerConfig, *, loglevel: str = "WARNING") -> int:
    """Run a worker until SIGINT/SIGTERM (faust's worker owns the loop and the signals)."""
    worker = StreamWorker(config)
    serve(worker.metrics, config.metrics_port, config.metrics_host)
    # our logging (infra/logs.py: one line per event, no flood from a dead broker), and
    # none of faust's terminal decoration in a log file: no spinner, no stdout redirect
    # (it split a traceback into one log line per token)
    faust_worker = faust.Worker(
        worker.app, loglevel=loglevel, quiet=True, redirect_stdouts=False,
        logging_config=logging_config(loglevel, config.log_format,
                                      worker.metrics.kafka_trouble))
    if not sys.stderr.isatty():
        faust_worker.spinner = None
    faust_worker.execute_from_commandline()
    return 0

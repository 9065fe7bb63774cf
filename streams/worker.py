"""The faust-streaming app: ``motcua streams``.

faust gives us the consumer group (partition assignment, rebalances, heartbeats), the agents
and the timers. The state is NOT in faust tables: their changelog recovery stops early on the
embedded broker (DESIGN.md "Known facts"), so exactness cannot rest on it. Each batch is
folded by ``streams.processor`` and committed to the worker store together with the source
positions; faust's committed offsets are only where the consumer starts looking. Agent
concurrency is 1 and batches come from ``stream.take_events()`` (faust's per-event path is
slow, and concurrency > 1 can commit past in-flight messages: faust #606).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import faust
import orjson
from faust.types import TP as FaustTP

from infra.broker import free_port
from infra.db import make_engine
from infra.settings import Settings
from schemas.keys import load_registry
from schemas.topics import COUNTERS, DEAD_LETTERS, DOSSIER_EVENTS, HOTLINE_EVENTS
from streams.processor import CALLS, DOSSIERS, TP, PositionConflict, Processor, Record

log = logging.getLogger("motcua.streams")

SnapshotKey = tuple[TP, str, str]  # (source partition, scope, period)
MAX_ROUND = 1000  # snapshots per publishing round


def snapshot_key(prefix: str, tp: TP, scope: str, period: str) -> str:
    """The ``counters`` record key: one partial per source partition (see streams/reader)."""
    topic = tp[0].removeprefix(prefix)
    return f"{scope}|{period}|{topic}:{tp[1]}"


class StreamWorker:
    def __init__(self, settings: Settings, *, worker_id: str | None = None,
                 verify: bool = True) -> None:
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        prefix = self.prefix = settings.topic_prefix
        self.source = {prefix + DOSSIER_EVENTS: DOSSIERS, prefix + HOTLINE_EVENTS: CALLS}
        registry = load_registry(settings.keys_path) if verify else None
        self.processor = Processor(make_engine(settings.streams_store_url, sqlite_sync="NORMAL"),
                                   self.source,
                                   registry, worker=self.worker_id,
                                   cache_size=settings.streams_cache)
        if self.processor.refolded:
            log.warning("the store was built by other counter rules: emptied, refolding "
                        "every partition from offset 0")
        self.batch_size = settings.streams_batch
        self.interval = settings.snapshot_interval_ms / 1000
        self.app = self._make_app()
        self._topics = {name: self.app.topic(name, key_type=bytes, value_type=bytes,
                                             key_serializer="raw", value_serializer="raw",
                                             internal=False)
                        for name in self.source}
        self.counters_name = prefix + COUNTERS
        self.dead_topic = self.app.topic(prefix + DEAD_LETTERS, key_serializer="raw",
                                         value_serializer="raw", internal=False)
        self._lock = asyncio.Lock()  # one batch at a time, and no rebalance inside one
        self._pending_checked = 0.0
        self.dirty: set[SnapshotKey] = set()  # changed since last published
        self.last_published: dict[SnapshotKey, float] = {}
        self._sought: dict[TP, tuple[int, float]] = {}
        self.assigned: set[TP] = set()
        for name, topic in self._topics.items():
            self.app.agent(topic, name=f"fold-{self.source[name]}", concurrency=1)(self._consume)
        self.app.timer(0.1, name="publish-snapshots")(self._publish_due)
        # mode's signal stubs reject any bound async receiver; the call shape is right
        self.app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    def _make_app(self) -> faust.App:
        s = self.settings
        session = s.group_config()["session_timeout_ms"] / 1000
        return faust.App(
            f"{self.prefix}motcua-streams",
            broker=[f"kafka://{h}" for h in s.bootstrap.split(",")],
            broker_credentials=_credentials(s),
            broker_session_timeout=session,
            broker_heartbeat_interval=s.group_config()["heartbeat_interval_ms"] / 1000,
            # faust waits 90 s for any answer and 20 min for a produce: a broker that goes
            # silent without closing its connections (frozen VM, network partition) held
            # the worker for the whole outage, although the other replicas led within
            # ~11 s (tests/chaos: a node SIGSTOPped 120 s stalled it 126 s). A request
            # unanswered for this long is sent again, to the new leader; a snapshot or
            # dead letter whose send fails is retried by this worker (never lost).
            broker_request_timeout=max(3 * session, 15.0),
            producer_request_timeout=max(3 * session, 15.0),
            consumer_auto_offset_reset="earliest",
            key_serializer="raw", value_serializer="raw",
            # No tables hold state (module docstring); kept ≥ 1 as the issue asks, so a table
            # added later is not left without a standby by default.
            table_standby_replicas=1,
            # faust's own leader topic only; ours are provisioned by `motcua topics create`
            topic_replication_factor=s.topic_replication_factor or 1,
            topic_allow_declare=True,  # only faust's own assignor topic; ours are provisioned
            producer_acks=-1,
            stream_wait_empty=False,
            # faust binds a web server even when disabled: keep it private and off 6066.
            web_enabled=False, web_bind="127.0.0.1", web_port=free_port(),
            datadir=str(s.data_dir / "faust"),
        )

    # --- consuming -----------------------------------------------------------------------

    async def _consume(self, stream: Any) -> None:
        async for events in stream.take_events(self.batch_size, within=0.02):
            await self.handle([Record(e.message.topic, e.message.partition, e.message.offset,
                                      e.message.key, e.message.value) for e in events])

    async def handle(self, records: list[Record]) -> None:
        async with self._lock:
            # a batch can still hold records of a partition revoked meanwhile: its new owner
            # takes them; committing them here would only make it conflict
            records = [r for r in records if (r.topic, r.partition) in self.assigned]
            tps = {(r.topic, r.partition) for r in records}
            try:
                await self._handle(records)
            except PositionConflict as exc:
                log.warning("%s; re-reading positions", exc)
                await self._seek_to_store(tps)
                self._reload_pending()
            except Exception:
                # Kafka or the store failed mid-batch: nothing of it is stored, so drop what
                # the cache holds ahead of the store; the next records of these partitions
                # are then ahead of it, and the worker seeks back and reads them again.
                log.exception("batch of %d records not stored; it will be read again",
                              len(records))
                self.processor.forget(tps)
                await asyncio.sleep(1.0)

    async def _handle(self, records: list[Record]) -> None:
        batch = self.processor.prepare(records)
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
        changed = self.processor.commit(batch)
        self.dirty.update((tp, scope, period) for tp, keys in changed.items()
                          for scope, period in keys)
        for tp, offset in batch.rewinds.items():
            await self._seek(tp, offset)

    def _reload_pending(self) -> None:
        """Snapshot marks in the store for our partitions (left by a crash, or by a batch
        another worker committed just before handing a partition over)."""
        self.dirty.update(self.processor.pending(self.assigned))

    async def _seek(self, tp: TP, offset: int) -> None:
        last = self._sought.get(tp)
        now = time.monotonic()
        if last is not None and last[0] == offset and now - last[1] < 1.0:
            return  # already going back there; records still in flight are skipped
        self._sought[tp] = (offset, now)
        log.info("seeking %s[%d] back to %d (the store's position)", tp[0], tp[1], offset)
        try:
            await self.app.consumer.seek(FaustTP(tp[0], tp[1]), offset)
        except Exception as exc:  # noqa: BLE001 - revoked meanwhile: the new owner seeks
            log.info("seek %s[%d] skipped: %r", tp[0], tp[1], exc)

    async def _seek_to_store(self, tps: Iterable[TP]) -> None:
        for tp, offset in self.processor.load_positions(tps).items():
            if tp in self.assigned:
                await self._seek(tp, offset)

    # --- rebalancing ---------------------------------------------------------------------

    async def _on_assigned(self, sender: Any, *args: Any, signal: Any = None,
                           **kwargs: Any) -> None:
        assigned: set[FaustTP] = args[0] if args else kwargs["assigned"]
        mine = {(tp.topic, tp.partition) for tp in assigned if tp.topic in self.source}
        self._hook_seek_to_committed()
        async with self._lock:  # never between a batch's prepare and its commit
            gone = self.assigned - mine
            self.assigned = mine
            self._forget(gone)
            try:
                positions = self.processor.load_positions(mine)
                self._reload_pending()
            except Exception:  # the store is down: batches will retry and seek back
                log.exception("could not read the store on assignment")
                return
        log.info("assigned %s", sorted(positions.items()))

    def _hook_seek_to_committed(self) -> None:
        """After each rebalance faust seeks every partition to Kafka's committed offset
        (``Consumer.perform_seek``, run by its recovery service after our signal). The
        store's positions are the truth: an offset committed for records that were
        acknowledged but not stored (a failed batch, a record of a partition revoked
        meanwhile, a position conflict) is ahead of the store, and a partition with no new
        records would never be read again (seen: two workers, one killed, the survivor
        stopped at 939 of 1,212). So the worker seeks to the store right after faust."""
        consumer = self.app.consumer
        if getattr(consumer, "_motcua_seek_hooked", False):
            return
        faust_seek = consumer.perform_seek

        async def perform_seek() -> None:
            await faust_seek()
            try:
                async with self._lock:
                    for tp in self.assigned:
                        self._sought.pop(tp, None)  # a fresh seek, never deduplicated
                    await self._seek_to_store(self.assigned)
            except Exception:
                log.exception("could not seek to the store's positions after a rebalance")

        consumer.perform_seek = perform_seek  # type: ignore[method-assign]
        consumer._motcua_seek_hooked = True  # type: ignore[attr-defined]

    async def _on_revoked(self, sender: Any, *args: Any, signal: Any = None,
                          **kwargs: Any) -> None:
        revoked: set[FaustTP] = args[0] if args else kwargs["revoked"]
        gone = {(tp.topic, tp.partition) for tp in revoked if tp.topic in self.source}
        async with self._lock:
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
            high = self.app.consumer.highwater(FaustTP(tp[0], tp[1]))
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
        if not self.dirty:
            return
        try:
            await self._publish_round()
        except Exception:
            log.exception("publishing snapshots failed; retrying")

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
        for key, values, next_offset, version in self.processor.snapshots(
                k for k in due if k[0] in self.assigned):
            tp, scope, period = key
            body = {"scope": scope, "period": period,
                    "source": {"topic": tp[0].removeprefix(self.prefix), "partition": tp[1],
                               "next_offset": next_offset},
                    "measures": values, "worker": self.worker_id, "published_at": stamp}
            # the producer itself, not Topic.send: faust's per-message wrapping costs more
            # than the message when thousands of partials change at once (a catch-up)
            fut = await self.app.producer.send(
                self.counters_name, snapshot_key(self.prefix, tp, scope, period).encode(),
                orjson.dumps(body), partition=None, timestamp=None, headers=None)
            self.last_published[key] = now
            sent.append((key, version, fut))
        if sent:
            await asyncio.gather(*(fut for _, _, fut in sent))
            self.processor.published_many([(k[0], k[1], k[2], v) for k, v, _ in sent])


def _credentials(s: Settings) -> Any:
    """faust's credentials from the MOTCUA_KAFKA_* settings kafka-python gets too
    (``Settings.kafka_config`` checked them: SASL has a mechanism, user and password)."""
    if s.kafka_security_protocol == "PLAINTEXT":
        return None
    context = s.ssl_context() if s.kafka_security_protocol.endswith("SSL") else None
    if s.kafka_security_protocol.startswith("SASL"):
        password = s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else ""
        # an ssl_context makes them SASL_SSL, its absence SASL_PLAINTEXT
        return faust.SASLCredentials(username=s.kafka_sasl_username or "", password=password,
                                     mechanism=s.kafka_sasl_mechanism or "PLAIN",
                                     ssl_context=context)
    return faust.SSLCredentials(context)


def shorten_fetch_wait(ms: int) -> None:
    """faust 0.15 builds its aiokafka consumer with ``fetch_max_wait_ms=1500`` hard-coded
    (faust/transport/drivers/aiokafka.py) and no setting to change it. A fetch that finds
    little data is then held up to 1.5 s by the broker, which alone breaks G7 (1 s, p99).
    This process only runs our worker, so its consumer class is given a shorter wait."""
    import aiokafka
    import faust.transport.drivers.aiokafka as driver

    base = aiokafka.AIOKafkaConsumer

    class ShortWaitConsumer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["fetch_max_wait_ms"] = ms
            super().__init__(*args, **kwargs)

    driver.aiokafka.AIOKafkaConsumer = ShortWaitConsumer  # type: ignore[attr-defined]


def run(settings: Settings, *, verify: bool = True, loglevel: str = "WARNING") -> int:
    """Run a worker until SIGINT/SIGTERM (faust's worker owns the loop and the signals)."""
    shorten_fetch_wait(settings.streams_fetch_wait_ms)
    worker = StreamWorker(settings, verify=verify)
    faust_worker = faust.Worker(worker.app, loglevel=loglevel, quiet=True)
    faust_worker.execute_from_commandline()
    return 0

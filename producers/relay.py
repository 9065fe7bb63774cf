"""The outbox relay: publishes each node's unpublished events to Kafka, in origin_seq order.

Runbook. ``motcua relay --node ID`` (or ``--all``; ``motcua up`` runs one in-process) reads
the store at ``MOTCUA_DB_URL``. It needs the node's events in the outbox and a reachable
cluster; when the cluster is not reachable it backs off (0.2 s doubling to 30 s) and retries,
while the dossier service keeps writing to the store. Nothing is lost: a row is marked
published (partition, offset) only after Kafka acknowledged it (acks=all, idempotent
producer); the marks of one round are written while the next round is on the wire. After a
crash it resumes at the first unmarked row; rows that were acknowledged but not yet marked
(at most two rounds) are sent again, with the same event_id, and readers drop them as
duplicates.
Only one relay publishes a node at a time: it holds a lease row in the store, renewed while
it runs; a relay killed with -9 is replaced once its lease expires (``lease_seconds``). A
round (a new producer's bootstrap, the send, the wait for the acks) is bounded by a third of
the lease, and a node is sent only while its lease has at least that long to run, so a round
never outlives its lease: a relay that stalled (a paused broker, a paused process) cannot
still be sending when another has taken over. Database errors (a restarted PostgreSQL) are
retried like Kafka errors.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from sqlalchemy import Connection, Engine, bindparam, func, select, update
from sqlalchemy.exc import SQLAlchemyError

from infra.db import driver_datetime, driver_sql, insert_ignore, reader, writer_if_free
from infra.metrics import Metrics
from infra.node_tables import node_heads, outbox, relay_leases

log = logging.getLogger("motcua.relay")

#: Seconds acknowledged events may stay unmarked while the store's write lock is busy; then
#: a round waits for the lock. Each unmarked event is sent again if the relay dies first.
MAX_DEFER = 2.0

# Only a row not yet marked: if two relays ever published one row, the first mark stands.
_MARK = (update(outbox)
         .where(outbox.c.origin == bindparam("o"), outbox.c.origin_seq == bindparam("s"),
                outbox.c.published_at.is_(None))
         .values(published_at=bindparam("at"), kafka_partition=bindparam("p"),
                 kafka_offset=bindparam("off")))


def _mark(conn: Connection, marks: list[dict[str, Any]]) -> None:
    """The marking UPDATE as one driver-level executemany (through SQLAlchemy's parameter
    processing it cost a third of the relay's database time, profiled)."""
    sql = driver_sql(conn, _MARK_SQL)
    if sql is None:  # a driver infra.db does not speak to directly: the portable path
        conn.execute(_MARK, marks)
        return
    at = driver_datetime(conn, marks[0]["at"])
    conn.exec_driver_sql(sql, [(at, m["p"], m["off"], m["o"], m["s"]) for m in marks])


_MARK_SQL = ("UPDATE outbox SET published_at = ?, kafka_partition = ?, kafka_offset = ? "
             "WHERE origin = ? AND origin_seq = ? AND published_at IS NULL")


def producer_config(kafka_config: dict[str, Any], round_seconds: float = 20.0
                    ) -> dict[str, Any]:
    """Durable, ordered publishing: every replica acknowledges, retries keep order and add
    no duplicates (idempotence), and the record timestamp is the send time (the default):
    never the event time, which retention would otherwise act on. A send gives up after
    ``round_seconds`` (the relay then backs off and sends again)."""
    budget_ms = int(round_seconds * 1000)
    # kafka-python 3.0 bootstraps from one random server and waits the whole timeout (30 s
    # by default) on it: a frozen node (connections accepted, nothing answered) cost the
    # relay 30 s per new producer in the fault drills (tests/chaos). A short one fails
    # fast, and the relay's next try picks another server at random. A caller's shorter
    # value wins (Settings.kafka_config carries MOTCUA_KAFKA_BOOTSTRAP_TIMEOUT_MS).
    return {**kafka_config, "bootstrap_timeout_ms": min(
                kafka_config.get("bootstrap_timeout_ms", budget_ms), max(1000, budget_ms // 6)),
            "acks": "all", "enable_idempotence": True,
            "max_in_flight_requests_per_connection": 5, "linger_ms": 5,
            "batch_size": 256 * 1024, "request_timeout_ms": max(500, budget_ms // 2),
            "delivery_timeout_ms": budget_ms, "max_block_ms": max(500, budget_ms // 4),
            "client_id": "motcua-relay"}


@dataclass
class RelayStats:
    published: int = 0
    failures: int = 0
    last_error: str | None = None
    deferred_marks: int = 0  # rounds whose marks waited for a free write lock


class Relay:
    def __init__(self, engine: Engine, kafka_config: dict[str, Any], *,
                 nodes: Sequence[str] | None = None, topic_prefix: str = "",
                 holder: str | None = None, batch_size: int = 2000,
                 lease_seconds: float = 60.0, idle_sleep: float = 0.02,
                 metrics: Metrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics or Metrics("relay")
        self._measured_at = 0.0
        self._oldest: tuple[Any, float] | None = None  # the oldest waiting event, since when
        self.kafka_config = kafka_config
        self.nodes = list(nodes) if nodes is not None else None  # None: every node in store
        self.prefix = topic_prefix
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.batch_size = batch_size
        self.lease = timedelta(seconds=lease_seconds)
        self.round_budget = self.lease / 3
        self.idle_sleep = idle_sleep
        self.stats = RelayStats()
        self._producer: KafkaProducer | None = None
        self._held: dict[str, datetime] = {}  # node -> lease expiry we wrote
        self._acked: list[dict[str, Any]] = []  # acknowledged by Kafka, not yet recorded
        self._acked_keys: set[tuple[str, int]] = set()
        self._acked_since = 0.0  # when the oldest unrecorded acknowledgement came
        self._next_claim = 0.0
        self._failed_rounds = 0  # rounds in a row that ended with a failed send

    # --- loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Publish until ``stop`` is set; survives broker outages by backing off."""
        delay = 0.2
        while not stop.is_set():
            try:
                self._measure()
                began = time.monotonic()
                sent = self.publish_once()
                if sent:
                    self.metrics.batch_seconds.observe(time.monotonic() - began)
                delay = 0.2
                if sent == 0:
                    stop.wait(self.idle_sleep)
            except (KafkaError, SQLAlchemyError) as exc:
                self.stats.failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                self.metrics.error(self.stats.last_error)
                log.warning("relay: %s unavailable (%s); retrying in %.1f s",
                            "Kafka" if isinstance(exc, KafkaError) else "the store",
                            self.stats.last_error, delay)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
        self.close()

    def _measure(self, every: float = 5.0) -> None:
        """Every few seconds: the events of this relay's nodes waiting in the outbox, and
        for how long the oldest of them has been seen waiting (event times are no guide: a
        simulation writes July's; a relay that keeps up moves its oldest on every time)."""
        now = time.monotonic()
        self.metrics.beat()
        if now - self._measured_at < every:
            return
        self._measured_at = now
        query = select(func.count(), func.min(outbox.c.occurred_at)).where(
            outbox.c.published_at.is_(None))
        if self.nodes is not None:
            query = query.where(outbox.c.origin.in_(self.nodes))
        with reader(self.engine) as conn:
            count, oldest = conn.execute(query).one()
        if not count:
            self._oldest = None
        elif self._oldest is None or self._oldest[0] != oldest:
            self._oldest = (oldest, now)
        self.metrics.outbox_waiting.set(count)
        self.metrics.lag(count, 0.0 if self._oldest is None else now - self._oldest[1])

    def close(self) -> None:
        try:
            self._record()
        except SQLAlchemyError:  # the store is down: those rows are sent again later
            log.warning("relay: could not record the last acknowledgements", exc_info=True)
        self._drop_producer()
        try:
            self._release_leases()
        except SQLAlchemyError:  # they expire by themselves
            log.warning("relay: could not release leases", exc_info=True)

    # --- one round ------------------------------------------------------------------------

    def publish_once(self) -> int:
        """One round: send up to ``batch_size`` unpublished events of the leased nodes, and
        record the previous round's acknowledgements while this one is on the wire.
        Returns how many events were acknowledged or recorded (0: nothing to do). Raises
        ``KafkaError`` if a send failed; what was acknowledged is recorded first."""
        nodes = self._leased_nodes()
        round_end = time.monotonic() + self.round_budget.total_seconds()
        rows = self._next_rows(nodes) if nodes else []
        if not rows:
            return self._record(wait=False)
        self.metrics.read(len(rows))
        producer = self._get_producer()  # a new one bootstraps: part of the round
        try:
            futures = [(row, producer.send(self.prefix + row.topic, value=bytes(row.body),
                                           key=row.dossier_id.encode()))
                       for row in rows]
        except KafkaError as exc:  # e.g. no metadata for the topic within max_block_ms
            self._round_failed(exc, stuck=False)
            raise
        self._record(wait=False)  # database work overlaps the producer's network I/O
        # Wait for the acknowledgements until the round ends, and not a moment longer: the
        # records go out after linger_ms without a flush(), whose timeout applies to each
        # batch in turn (a frozen node once held a 20 s round for 31 s), and kafka-python
        # 3.0 can leave a future pending forever after the broker was paused mid-request.
        for _row, future in futures:
            remaining = round_end - time.monotonic()
            if remaining <= 0:
                break
            if not future.is_done:
                try:
                    future.get(timeout=remaining)
                except KafkaError:
                    pass  # judged below, with the others
        now = datetime.now(UTC)
        acked, error, pending = 0, None, False
        for row, future in futures:
            if not future.is_done:
                pending = True
                error = KafkaTimeoutError(f"no acknowledgement within the round "
                                          f"({self.round_budget.total_seconds():.0f} s)")
                continue
            try:
                meta = future.get(timeout=0)
            except KafkaError as exc:
                error = exc
                continue
            if not self._acked:
                self._acked_since = time.monotonic()
            self._acked.append({"o": row.origin, "s": row.origin_seq, "at": now,
                                "p": meta.partition, "off": meta.offset})
            self._acked_keys.add((row.origin, row.origin_seq))
            acked += 1
        self.stats.published += acked
        self.metrics.wrote(acked)
        if error is not None:
            self._round_failed(error, stuck=pending)
            raise error
        self._failed_rounds = 0
        return acked

    def _round_failed(self, error: KafkaError, *, stuck: bool) -> None:
        """Record what was acknowledged; replace the producer only if it is suspect.

        A producer whose sends all ended (acknowledged, or expired after
        delivery_timeout_ms) is kept: it knows where the leaders moved, while a new one
        bootstraps again, maybe from the very node that stopped answering (a 30 s SIGSTOP
        drill lost its whole freeze that way). One that left a send pending, failed
        otherwise than by a timeout, or failed three rounds in a row, is replaced."""
        self._record()
        self._failed_rounds += 1
        if stuck or self._failed_rounds >= 3 or not isinstance(error, KafkaTimeoutError):
            self._drop_producer()

    def _next_rows(self, nodes: list[str]) -> list[Any]:
        """Unpublished rows in (origin, seq) order, minus those acknowledged but not yet
        recorded."""
        with reader(self.engine) as conn:  # a snapshot: never waits for the nodes' writers
            rows = conn.execute(
                select(outbox.c.origin, outbox.c.origin_seq, outbox.c.topic,
                       outbox.c.dossier_id, outbox.c.body)
                .where(outbox.c.published_at.is_(None), outbox.c.origin.in_(nodes))
                .order_by(outbox.c.origin, outbox.c.origin_seq)
                .limit(self.batch_size + len(self._acked_keys))).all()
        return [r for r in rows if (r.origin, r.origin_seq) not in self._acked_keys
                ][:self.batch_size]

    def _record(self, *, wait: bool = True) -> int:
        """Write the acknowledged events' partition/offset to the outbox. Without ``wait``,
        only if the store can take the write at once: otherwise the marks wait for a later
        round (at most MAX_DEFER seconds), and this round goes on sending; rows
        acknowledged but not yet marked are not sent again meanwhile (``_next_rows``)."""
        if not self._acked:
            return 0
        waits = wait or time.monotonic() - self._acked_since > MAX_DEFER
        with self.engine.begin() if waits else writer_if_free(self.engine) as conn:
            if conn is None:
                self.stats.deferred_marks += 1
                return 0
            marks, self._acked = self._acked, []
            began = time.monotonic()
            _mark(conn, marks)
            self.metrics.commit_seconds.observe(time.monotonic() - began)
        self._acked_keys.clear()
        return len(marks)

    # --- producer -------------------------------------------------------------------------

    def _get_producer(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(**producer_config(
                self.kafka_config, self.round_budget.total_seconds()))
        return self._producer

    def _drop_producer(self) -> None:
        if self._producer is not None:
            try:
                self._producer.close(timeout=1)
            except Exception:  # a broken client is dropped either way
                log.debug("relay: error closing producer", exc_info=True)
            self._producer = None

    # --- leases ---------------------------------------------------------------------------

    def _leased_nodes(self) -> list[str]:
        """Nodes this relay may publish now. Leases are renewed at half their life and new
        ones claimed every few seconds, so the lease table costs little per round."""
        now = datetime.now(UTC)
        renew_due = any(until - now < self.lease / 2 for until in self._held.values())
        if renew_due or time.monotonic() >= self._next_claim:
            self._claim(now)
            self._next_claim = time.monotonic() + min(2.0, self.lease.total_seconds() / 3)
            now = datetime.now(UTC)
        # a round may take round_budget: send a node only if its lease outlasts that
        return sorted(n for n, until in self._held.items() if until - now > self.round_budget)

    def _claim(self, now: datetime) -> None:
        until = now + self.lease
        with self.engine.begin() as conn:
            wanted = self.nodes
            if wanted is None:
                wanted = [r.node_id for r in conn.execute(select(node_heads.c.node_id))]
            wanted = sorted(wanted)  # one lock order for every relay: no deadlock
            held: dict[str, datetime] = {}
            for node in wanted:
                insert_ignore(conn, relay_leases,
                              {"node_id": node, "holder": self.holder, "expires_at": now})
                row = conn.execute(select(relay_leases).where(relay_leases.c.node_id == node)
                                   .with_for_update()).one()
                if row.holder == self.holder or row.expires_at <= now:
                    conn.execute(update(relay_leases).where(relay_leases.c.node_id == node)
                                 .values(holder=self.holder, expires_at=until))
                    held[node] = until
        lost = set(self._held) - set(held)
        if lost:
            log.warning("relay %s: lease lost for %s", self.holder, sorted(lost))
        self._held = held

    def _release_leases(self) -> None:
        if not self._held:
            return
        with self.engine.begin() as conn:
            conn.execute(update(relay_leases)
                         .where(relay_leases.c.holder == self.holder,
                                relay_leases.c.node_id.in_(list(self._held)))
                         .values(expires_at=datetime.now(UTC)))
        self._held = {}

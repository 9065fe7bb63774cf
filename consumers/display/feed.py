"""The display's one input: the ``counters`` topic, read from its start and then tailed,
without a consumer group (every display keeps its own position; nothing is committed).

A thread polls with kafka-python and applies each batch to ``Boards`` under a lock, then
calls ``on_change`` (the web app wakes its broadcaster). A broker that goes away is retried
with backoff for ever: the boards keep their last values and say how old they are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import TopicPartition
from kafka.errors import KafkaError

from consumers.display.board import Boards
from infra.kafka_log import PollLag, at_end, log_reader
from infra.metrics import Metrics

log = logging.getLogger("motcua.display")


class Feed:
    """Reads ``topic`` into ``boards``; ``lock`` guards every use of ``boards``."""

    def __init__(self, kafka_config: dict[str, Any], topic: str, boards: Boards,
                 lock: threading.Lock, on_change: Callable[[], None] = lambda: None,
                 metrics: Metrics | None = None) -> None:
        self.kafka_config = kafka_config
        self.metrics = metrics or Metrics("display")
        self._lag = PollLag()
        self.topic = topic
        self.boards = boards
        self.lock = lock
        self.on_change = on_change
        self.caught_up = False  # read to the end once: figures are no longer partial
        self.last_record_at: float | None = None  # wall time of the last record read
        self.last_error: str | None = None
        self.connected = False
        self._positions: dict[TopicPartition, int] = {}  # next offset to read

    def run(self, stop: threading.Event) -> None:
        delay = 0.5
        while not stop.is_set():
            try:
                self._tail(stop)
                return
            except KafkaError as exc:
                self.connected = False
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.metrics.error(self.last_error)
                log.warning("display: counters topic unreadable (%s); retrying in %.1f s",
                            self.last_error, delay)
                stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def _tail(self, stop: threading.Event) -> None:
        # a short fetch wait: a board is as fresh as this read (one consumer: cheap)
        consumer = log_reader(self.kafka_config, fetch_wait_ms=20)
        try:
            tps: list[TopicPartition] = []
            while not tps and not stop.is_set():
                parts = consumer.partitions_for_topic(self.topic)
                if parts:
                    tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
                else:
                    self.last_error = f"topic {self.topic} does not exist yet"
                    stop.wait(1.0)
            if not tps:
                return
            consumer.assign(tps)
            # positions are kept across a reconnect: the boards already hold what was read
            for tp, offset in self._positions.items():
                if tp in tps:
                    consumer.seek(tp, offset)
            self.connected = True
            self.last_error = None
            while not stop.is_set():
                batches = consumer.poll(timeout_ms=200, max_records=5000)
                self.metrics.read(sum(len(r) for r in batches.values()))
                self.metrics.lag(*self._lag.after(consumer, batches, time.time()))
                if batches:
                    with self.lock:
                        for tp, records in batches.items():
                            for rec in records:
                                if not self.boards.apply(rec.key, rec.value):
                                    log.warning("display: skipped a record that is not a "
                                                "counters snapshot at %s[%d]@%d", tp.topic,
                                                tp.partition, rec.offset)
                            self._positions[tp] = records[-1].offset + 1
                    self.last_record_at = time.time()
                    self.metrics.wrote(sum(len(r) for r in batches.values()))
                    self.metrics.snapshot()
                    self.on_change()
                if not self.caught_up and all(at_end(consumer, tp) for tp in tps):
                    self.caught_up = True
                    self.on_change()
        finally:
            consumer.close()

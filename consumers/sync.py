"""The sync consumer of one node's replica (issue 5, in progress): Kafka in, replica rows out.

kafka-python, with the source partitions assigned by hand (a site reads every partition;
no consumer group, so no rebalance): each start seeks every partition to the position the
replica stored with its rows, so Kafka's committed offsets play no part. Each poll is
decoded and verified (schema, hash, signature, known origin, record key = dossier id);
what fails goes to dead-letters with its reason before the batch is applied; the rest is
applied with the new positions in one transaction (``consumers.replica``).

Not yet: folding hotline calls into rows, the commune filter, ``motcua sync`` and ``sync status``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from consumers.replica import Applied, Replica
from schemas.deadletter import DeadLetter
from schemas.errors import MotcuaError
from schemas.events import AnyEvent
from schemas.integrity import KeyRegistry, checked_event
from schemas.topics import DEAD_LETTERS, DOSSIER_EVENTS, HOTLINE_EVENTS

log = logging.getLogger("motcua.sync")


class SyncConsumer:
    def __init__(self, replica: Replica, kafka_config: dict[str, Any], registry: KeyRegistry,
                 *, node: str, prefix: str = "", max_records: int = 2000) -> None:
        self.replica = replica
        self.kafka_config = kafka_config
        self.registry = registry
        self.node = node
        # hotline events too: they share their origins' chains, so without them every
        # site would show gaps (their calls are not folded into rows yet)
        self.topics = (prefix + DOSSIER_EVENTS, prefix + HOTLINE_EVENTS)
        self.dead_topic = prefix + DEAD_LETTERS
        self.max_records = max_records
        self.applied = Applied()
        self.dead = 0

    def run(self, stop: threading.Event) -> None:
        consumer = KafkaConsumer(**self.kafka_config, group_id=None, enable_auto_commit=False,
                                 auto_offset_reset="earliest", fetch_max_wait_ms=100)
        producer = KafkaProducer(**self.kafka_config, acks="all")
        try:
            tps = [TopicPartition(topic, p) for topic in self.topics
                   for p in sorted(consumer.partitions_for_topic(topic) or set())]
            consumer.assign(tps)
            stored = self.replica.positions()
            for tp in tps:
                consumer.seek(tp, stored.get((tp.topic, tp.partition), 0))
            while not stop.is_set():
                polled = consumer.poll(timeout_ms=200, max_records=self.max_records)
                if polled:
                    self._apply(polled, producer)
        finally:
            producer.close(5)
            consumer.close()

    def _apply(self, polled: dict[TopicPartition, list[Any]], producer: KafkaProducer) -> None:
        events: list[AnyEvent] = []
        dead: list[DeadLetter] = []
        moved: dict[tuple[str, int], int] = {}
        for tp, records in polled.items():
            for rec in records:
                moved[(tp.topic, tp.partition)] = rec.offset + 1
                try:
                    events.append(checked_event(rec.key, rec.value, self.registry))
                except MotcuaError as exc:
                    dead.append(DeadLetter.of(exc, source_topic=tp.topic,
                                              partition=tp.partition, offset=rec.offset,
                                              key=rec.key, value=rec.value,
                                              stage=f"sync:{self.node}"))
        for letter in dead:  # acknowledged before the positions move past them
            key, value = letter.record()
            producer.send(self.dead_topic, key=key, value=value)
        if dead:
            producer.flush(30)
            self.dead += len(dead)
        result = self.replica.apply(events, moved)
        for reason in result.forks + result.broken:
            log.warning("refused: %s", reason)
        self.applied.add(result)

"""Reading a topic to its end without a group, and the ``counters`` topic's latest
snapshots (``motcua counters``, displays, tests); the record itself is schemas/snapshot.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from infra.kafka_log import at_end, log_reader
from schemas.errors import MotcuaError
from schemas.snapshot import Snapshot, latest


class TopicUnreadable(MotcuaError):
    """A topic is missing, or could not be read to its end in time."""


def read_to_end(kafka_config: dict[str, Any], topic: str, timeout: float = 30.0
                ) -> Iterator[ConsumerRecord]:
    """Every record of ``topic`` from the start to its end, without a consumer group. The
    end is the high watermark seen in fetch responses (the embedded broker's ListOffsets is
    too low: DESIGN.md "Known facts"); a partition whose high watermark is not known yet is
    not at its end."""
    consumer = log_reader(kafka_config)
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise TopicUnreadable(f"topic {topic!r} does not exist (run `motcua topics "
                                  "create` or `motcua up`)")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while True:
            for records in consumer.poll(timeout_ms=200, max_records=50_000).values():
                yield from records
            if all(at_end(consumer, tp) for tp in tps):
                return
            if time.monotonic() > deadline:
                raise TopicUnreadable(f"could not read {topic} to its end in {timeout:g} s "
                                      "(is the broker up?)")
    finally:
        consumer.close()


def read_snapshots(kafka_config: dict[str, Any], topic: str, timeout: float = 30.0
                   ) -> dict[str, Snapshot]:
    """The latest snapshot of every key of the counters ``topic`` (schemas/snapshot.py)."""
    return latest((rec.key, rec.value) for rec in read_to_end(kafka_config, topic, timeout))

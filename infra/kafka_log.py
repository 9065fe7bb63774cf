"""Reading a topic's log without a consumer group (platform): the one set-up that
``read_to_end``, the sync consumers and their lag probe share.

No group (nothing is committed: each reader keeps its own positions), from the earliest
record, and a short fetch wait so a quiet partition answers quickly. Where "the end" of a
partition is, is the high watermark of fetch responses: the embedded broker's ListOffsets
reports end offsets that are too low (DESIGN.md "Known facts")."""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, TopicPartition


def log_reader(kafka_config: dict[str, Any], fetch_wait_ms: int = 100) -> KafkaConsumer:
    """A group-less kafka-python consumer over ``kafka_config`` (assign partitions to it)."""
    return KafkaConsumer(**kafka_config, group_id=None, enable_auto_commit=False,
                         auto_offset_reset="earliest", fetch_max_wait_ms=fetch_wait_ms)


def at_end(consumer: KafkaConsumer, tp: TopicPartition) -> bool:
    """Whether ``consumer`` has read ``tp`` to the high watermark of its last fetch (a
    partition not fetched yet is not at its end)."""
    high = consumer.highwater(tp)
    return high is not None and consumer.position(tp) >= high

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


class PollLag:
    """How far a group-less reader is behind, after each poll: records between its
    positions and the fetch high watermark, and in seconds the age of the newest record it
    has read while still behind (record timestamps are send times: DESIGN.md "Topics")."""

    def __init__(self) -> None:
        self.newest_ts = 0.0  # seconds since the epoch

    def after(self, consumer: KafkaConsumer, polled: dict[TopicPartition, list[Any]],
              now: float) -> tuple[int, float]:
        for batch in polled.values():
            if batch:
                self.newest_ts = max(self.newest_ts, batch[-1].timestamp / 1000)
        behind = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            records = polled.get(tp)
            # no waiting: a position not known yet counts as nothing behind
            at = records[-1].offset + 1 if records else consumer.position(tp, timeout_ms=0)
            if at is not None:
                behind += max(0, high - at)
        if not behind:
            return 0, 0.0
        # behind, and no record read yet: how old the backlog is, is not known
        return behind, max(0.0, now - self.newest_ts) if self.newest_ts else float("inf")

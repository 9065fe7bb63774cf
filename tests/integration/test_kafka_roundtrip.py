"""Signed events really travel through the broker: produced with kafka-python, consumed by a
group with the short timings, decoded and verified on the other side, byte for byte."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from schemas.codec import decode, encode
from schemas.errors import BadHash
from schemas.integrity import verify
from tests.factories import Chain, registry_of
from tests.timing import Deadline, budget


def consume(config: dict[str, Any], topic: str, group: str, want: int,
            timeout: float = 30.0) -> list[Any]:
    consumer = KafkaConsumer(topic, group_id=group, enable_auto_commit=False, **config)
    records: list[Any] = []
    deadline = Deadline(timeout, f"{want} records")
    try:
        while len(records) < want and not deadline.expired():
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
    finally:
        consumer.close()
    return records


def test_events_cross_the_broker_intact_and_in_order_per_dossier(
        topic_factory: Callable[..., str], group_factory: Callable[[], str],
        kafka_config: dict[str, Any], consumer_config: dict[str, Any]) -> None:
    topic = topic_factory(partitions=3)
    chains = [Chain(o) for o in ("11977", "12337", "site-phohien")]
    sent = [chain.emit("dossier.status_changed", dossier_id=f"D-{chain.origin}-{i % 4}")
            for chain in chains for i in range(20)]
    producer = KafkaProducer(acks="all", **kafka_config)
    for event in sent:
        producer.send(topic, key=event.dossier_id.encode(), value=encode(event))
    producer.flush(budget(10))
    producer.close()

    started = time.monotonic()
    records = consume(consumer_config, topic, group_factory(), len(sent))
    assert len(records) == len(sent)
    took = time.monotonic() - started
    # 15 s on an unloaded machine, scaled (tests/timing.py)
    assert took < budget(15), f"first records after {took:.1f} s: group join too slow, " \
        "are the short timings set?"
    registry = registry_of(*chains)
    by_dossier: dict[str, list[int]] = defaultdict(list)
    for record in records:
        event = decode(record.value)
        verify(event, registry)
        assert record.key == event.dossier_id.encode()
        by_dossier[event.dossier_id].append(event.origin_seq)
    assert {r.value for r in records} == {encode(e) for e in sent}
    for seqs in by_dossier.values():  # one dossier lives on one partition: order holds
        assert seqs == sorted(seqs)


def test_tampering_on_the_wire_is_caught_by_the_reader(
        topic_factory: Callable[..., str], group_factory: Callable[[], str],
        kafka_config: dict[str, Any], consumer_config: dict[str, Any]) -> None:
    topic = topic_factory(partitions=1)
    chain = Chain("11977")
    raw = encode(chain.emit("dossier.received"))
    producer = KafkaProducer(**kafka_config)
    producer.send(topic, raw.replace(b'"channel":"online"', b'"channel":"postal"')
                  .replace(b'"full_online":true', b'"full_online":false'))
    producer.flush(budget(10))
    producer.close()
    [record] = consume(consumer_config, topic, group_factory(), 1)
    with pytest.raises(BadHash):
        verify(decode(record.value), registry_of(chain))

"""The drills' own 3-node Apache Kafka cluster and PostgreSQL schemas.

The cluster is this package's alone (not the session ``broker``): a drill kills and pauses
its nodes, and a cluster left broken by a failed drill must not fail the other tests. The
drills do not run on tansu: they kill nodes of a replicated cluster, and tansu is one
memory-only process.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka.errors import KafkaError
from sqlalchemy import Engine, text

from infra.kafka.cluster import KafkaCluster
from infra.settings import Settings, group_env
from infra.topics import admin_client
from tests.conftest import broker_kinds, kafka_lib

# the shortest group timing Apache Kafka takes (session 6000 ms, heartbeat 1500 ms)
GROUP_ENV = group_env("kafka")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if broker_kinds(config) == ["tansu"]:
        skip = pytest.mark.skip(reason="MOTCUA_TEST_BROKER=tansu: a drill kills nodes of a "
                                       "replicated Apache Kafka cluster; tansu is one "
                                       "memory-only process")
        for item in items:
            if item.path.is_relative_to(Path(__file__).parent):
                item.add_marker(skip)


@pytest.fixture(scope="package")
def chaos_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three combined KRaft nodes, for the drills of this package only."""
    with KafkaCluster(tmp_path_factory.mktemp("chaos-kafka"), 3, lib=kafka_lib()) as cluster:
        yield cluster


@pytest.fixture
def cluster(chaos_cluster: KafkaCluster) -> KafkaCluster:
    """The drills' cluster with every node running and answering (a failed drill may have
    left one killed or paused), and no partition short of a replica."""
    for node in chaos_cluster.nodes:
        if node.running():
            node.resume()
        else:
            node.start()
    chaos_cluster.wait_ready(180)
    wait_full_isr(chaos_cluster, 180)
    return chaos_cluster


def under_replicated(cluster: KafkaCluster, node_id: int | None = None) -> list[str]:
    """Partitions (of every topic) whose ISR lacks one of their replicas, or lacks
    ``node_id`` if given."""
    admin = admin_client({"bootstrap_servers": cluster.bootstrap.split(",")}, 5000)
    try:
        topics = admin.describe_topics()
    finally:
        admin.close()
    short = []
    for topic in topics:
        for p in topic["partitions"]:
            wanted = set(p["replica_nodes"]) if node_id is None else (
                {node_id} & set(p["replica_nodes"]))
            if not wanted <= set(p["isr_nodes"]):
                short.append(f"{topic['name']}[{p['partition_index']}]")
    return short


def wait_full_isr(cluster: KafkaCluster, timeout: float, node_id: int | None = None) -> float:
    """Until no partition is under-replicated (or misses ``node_id``); returns the seconds
    it took."""
    started = time.monotonic()
    short: list[str] = ["(not asked yet)"]
    while time.monotonic() - started < timeout:
        try:
            short = under_replicated(cluster, node_id)
        except KafkaError as exc:
            short = [f"({type(exc).__name__})"]
        if not short:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"after {timeout:.0f} s still out of the ISR: {short[:10]}")


@pytest.fixture
def pg_url(pg_admin: Engine, settings: Settings) -> Iterator[Callable[[], str]]:
    """``pg_url()`` makes a fresh PostgreSQL schema and returns a URL whose search_path is
    that schema (for child processes); every schema is dropped after the test."""
    made: list[str] = []

    def make() -> str:
        schema = f"motcua_chaos_{uuid.uuid4().hex[:10]}"
        with pg_admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        made.append(schema)
        return f"{settings.test_pg_url}?options=-csearch_path%3D{schema}"

    yield make
    for schema in made:
        with pg_admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))

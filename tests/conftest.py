"""Shared fixtures: a broker, unique topics and groups, PostgreSQL with a fresh schema.

The broker, once per session, is the first that exists of:
1. ``MOTCUA_KAFKA_BOOTSTRAP`` (any real cluster; nothing else is started);
2. an Apache Kafka container from testcontainers, where a Docker engine answers;
3. the embedded tansu broker on a free port (this machine: no Docker engine).
PostgreSQL is ``MOTCUA_TEST_PG_URL`` (default: the local server, database ``test``); each
session works in its own schema, dropped at the end. A missing PostgreSQL fails the tests
that need it: a store test that silently skips is a store that is never tested.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from sqlalchemy import Engine, text

from infra.broker import EmbeddedBroker
from infra.db import make_engine
from infra.settings import Settings, load_settings


@dataclass
class Broker:
    bootstrap: str
    kind: str  # "external" | "testcontainers" | "embedded"
    embedded: EmbeddedBroker | None = None  # set when tests may pause/resume it


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine here"
        return False


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def broker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if settings.kafka_bootstrap:
        yield Broker(settings.kafka_bootstrap, "external")
    elif _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield Broker(kafka.get_bootstrap_server(), "testcontainers")
    else:
        log = tmp_path_factory.mktemp("broker") / "tansu.log"
        with EmbeddedBroker(log_path=log) as embedded:
            yield Broker(embedded.bootstrap, "embedded", embedded)


@pytest.fixture(scope="session")
def kafka_config(settings: Settings, broker: Broker) -> dict[str, Any]:
    return settings.kafka_config(broker.bootstrap)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name("orders")`` -> ``orders-test_x-1a2b3c4d``: no two tests share a name."""
    test = "".join(ch if ch.isalnum() else "-" for ch in request.node.name)[:40]

    def make(prefix: str) -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def topic_factory(kafka_config: dict[str, Any], unique_name: Callable[[str], str]
                  ) -> Iterator[Callable[..., str]]:
    admin = KafkaAdminClient(**kafka_config)

    def make(partitions: int = 3, configs: dict[str, str] | None = None) -> str:
        name = unique_name("t")
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=configs or {})])
        return name

    yield make
    admin.close()


@pytest.fixture
def group_factory(unique_name: Callable[[str], str]) -> Callable[[], str]:
    return lambda: unique_name("g")


@pytest.fixture
def consumer_config(kafka_config: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """kafka-python consumer settings with the short group timings (see Settings)."""
    return {**kafka_config, **settings.group_config(), "auto_offset_reset": "earliest"}


@pytest.fixture(scope="session")
def pg_admin(settings: Settings) -> Iterator[Engine]:
    """An engine on the test database itself, used to create and drop schemas."""
    admin = make_engine(settings.test_pg_url)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - becomes one clear failure
        pytest.fail(f"PostgreSQL not reachable at {settings.test_pg_url} "
                    f"({exc.__class__.__name__}); start it or set MOTCUA_TEST_PG_URL",
                    pytrace=False)
    yield admin
    admin.dispose()


@contextmanager
def _pg_schema(admin: Engine, url: str) -> Iterator[Engine]:
    schema = f"motcua_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(url, schema=schema)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(scope="session")
def pg_engine(pg_admin: Engine, settings: Settings) -> Iterator[Engine]:
    """PostgreSQL in a fresh schema for the whole test session."""
    with _pg_schema(pg_admin, settings.test_pg_url) as engine:
        yield engine


@pytest.fixture(params=["sqlite", "postgresql"])
def db_engine(request: pytest.FixtureRequest, tmp_path: Path, settings: Settings
              ) -> Iterator[Engine]:
    """Runs a store test once on SQLite and once on PostgreSQL, each time on empty tables."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
        yield engine
        engine.dispose()
    else:
        with _pg_schema(request.getfixturevalue("pg_admin"), settings.test_pg_url) as engine:
            yield engine


@pytest.fixture
def pg_fresh(pg_admin: Engine, settings: Settings) -> Iterator[Engine]:
    """PostgreSQL in a fresh schema for one test."""
    with _pg_schema(pg_admin, settings.test_pg_url) as engine:
        yield engine

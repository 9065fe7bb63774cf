"""Shared fixtures: a broker, unique topics and groups, PostgreSQL with a fresh schema.

The broker, once per session and kind:
1. ``MOTCUA_KAFKA_BOOTSTRAP``, if set: that cluster only (nothing else is started);
2. else the kinds that ``--broker`` or ``MOTCUA_TEST_BROKER`` name (default ``both``):
   ``tansu``, the embedded broker on a free port, and ``kafka``, a local Apache Kafka
   cluster of ``MOTCUA_TEST_KAFKA_BROKERS`` (default 3) KRaft nodes from the jars in
   ``var/kafka/lib`` (``motcua kafka install``), or a testcontainers Apache Kafka where a
   Docker engine answers. Every test that takes ``broker`` runs once per kind, ids
   ``[tansu]`` / ``[kafka]``; pytest runs all of one kind, then all of the other.
PostgreSQL is ``MOTCUA_TEST_PG_URL`` (default: the local server, database ``test``); each
session works in its own schema, dropped at the end. A missing PostgreSQL fails the tests
that need it: a store test that silently skips is a store that is never tested.
"""

from __future__ import annotations

import os
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
from infra.kafka.cluster import KafkaCluster, installed, lib_dir
from infra.settings import Settings, group_env, load_settings
from tests import timing

REPO = Path(__file__).resolve().parents[1]
KINDS = ("tansu", "kafka")


@dataclass
class Broker:
    bootstrap: str
    kind: str  # "tansu" | "kafka" | "external"
    embedded: EmbeddedBroker | None = None
    cluster: KafkaCluster | None = None  # the local Apache Kafka (kill, pause one node)

    @property
    def group_env(self) -> dict[str, str]:
        """Consumer-group timing for this broker: tansu holds a join for half the session
        timeout (2000 ms is its floor); Apache Kafka refuses less than 6000 ms."""
        return group_env("tansu" if self.kind == "tansu" else "kafka")

    def pause(self) -> None:
        """An outage: SIGSTOP the broker (every node of a local cluster)."""
        target = self.embedded or self.cluster
        if target is None:
            pytest.skip("cannot pause an external cluster (MOTCUA_KAFKA_BOOTSTRAP)")
        target.pause()

    def resume(self) -> None:
        target = self.embedded or self.cluster
        assert target is not None
        target.resume()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--broker", choices=["tansu", "kafka", "both"], default=None,
                     help="broker(s) for the integration tests (default: MOTCUA_TEST_BROKER, "
                          "else both)")


HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    # the wait budgets' factor, measured once at the session's start (tests/timing.py); a
    # bad MOTCUA_TEST_TIME_SCALE stops the session before any test runs
    try:
        timing.factor()
    except timing.TimeScaleError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_report_header(config: pytest.Config) -> str:
    return timing.describe()


def broker_kinds(config: pytest.Config) -> list[str]:
    if os.environ.get("MOTCUA_KAFKA_BOOTSTRAP"):
        return ["external"]
    chosen = config.getoption("--broker") or os.environ.get("MOTCUA_TEST_BROKER", "both")
    if chosen not in (*KINDS, "both"):
        raise pytest.UsageError(f"MOTCUA_TEST_BROKER={chosen!r}: tansu, kafka or both")
    return list(KINDS) if chosen == "both" else [chosen]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test that needs a broker, directly or through another fixture, runs once per
    # kind; session scope keeps one broker of each kind for the whole run.
    if "broker" in metafunc.fixturenames:
        metafunc.parametrize("broker", broker_kinds(metafunc.config), indirect=True,
                             scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests under integration/ and chaos/ need a real broker or PostgreSQL: marked, so that
    # `-m "not integration"` (make test-unit) runs the rest in seconds.
    # pytest-timeout's cap on a test (--timeout, else pyproject's 300 s, else the test's
    # own mark) grows with the waits it caps on a slow machine (tests/timing.py); it never
    # shrinks, so a waiting test fails on its own deadline, with its own message
    cap = getattr(config, "_env_timeout", None)
    scale = timing.factor()
    for item in items:
        if {"integration", "chaos"} & set(item.path.relative_to(HERE).parts[:1]):
            item.add_marker(pytest.mark.integration)
        marker = item.get_closest_marker("timeout")
        written = marker.args[0] if marker is not None and marker.args else cap
        if written and scale > 1:
            item.add_marker(pytest.mark.timeout(written * scale), append=False)


def only_on(broker: Broker, kind: str, why: str) -> None:
    """Skip this run of a parametrized test on the other broker, saying why."""
    if broker.kind != kind:
        pytest.skip(f"{kind} only: {why}")


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


def kafka_lib() -> Path:
    lib = lib_dir(REPO / "var")
    if not installed(lib):
        pytest.fail(f"no Apache Kafka jars in {lib}: run `motcua kafka install` (make test "
                    "does), or MOTCUA_TEST_BROKER=tansu to test on the embedded broker only",
                    pytrace=False)
    return lib


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest, settings: Settings,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The broker of this kind, with its group timing in the environment while it lives
    (``cli_env`` hands it to the motcua processes that tests start)."""
    kind = getattr(request, "param", "external" if settings.kafka_bootstrap else "tansu")
    with _started(kind, settings, tmp_path_factory) as broker:
        saved = {k: os.environ.get(k) for k in broker.group_env}
        os.environ.update(broker.group_env)
        try:
            yield broker
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextmanager
def _started(kind: str, settings: Settings, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Broker]:
    if kind == "external":
        assert settings.kafka_bootstrap
        yield Broker(settings.kafka_bootstrap, "external")
    elif kind == "tansu":
        log = tmp_path_factory.mktemp("broker") / "tansu.log"
        with EmbeddedBroker(log_path=log) as embedded:
            yield Broker(embedded.bootstrap, "tansu", embedded)
    elif _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield Broker(kafka.get_bootstrap_server(), "kafka")
    else:
        size = int(os.environ.get("MOTCUA_TEST_KAFKA_BROKERS", "3"))
        with KafkaCluster(tmp_path_factory.mktemp("kafka"), size, lib=kafka_lib()) as cluster:
            yield Broker(cluster.bootstrap, "kafka", cluster=cluster)


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
def consumer_config(kafka_config: dict[str, Any], broker: Broker) -> dict[str, Any]:
    """kafka-python consumer settings with the broker's short group timings."""
    timing = load_settings(**{k.removeprefix("MOTCUA_").lower(): int(v)
                              for k, v in broker.group_env.items()}).group_config()
    return {**kafka_config, **timing, "auto_offset_reset": "earliest"}


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


def unique_prefix(kind: str) -> str:
    """A topic prefix no other test and no earlier run has used: against a long-lived
    cluster (MOTCUA_KAFKA_BOOTSTRAP), a prefix derived from the test's name would read the
    records an earlier run left (issue 15, item 7)."""
    return f"{kind}{uuid.uuid4().hex[:10]}."

"""The composition root: the one place that builds objects from ``Settings`` (topics, keys,
the relay, replicas, the stream worker's configuration). Commands call these; the layers
below take plain arguments."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from consumers.sync.replica import Replica
from infra.db import make_engine, sqlite_file
from infra.metrics import Metrics
from infra.process import Loop
from infra.settings import Settings
from infra.topics import admin_client, ensure_topics
from producers.relay import Relay
from schemas.errors import MotcuaError
from schemas.keys import REGISTRY_FILE, Keyring, init_keystore
from schemas.nodes import node_ids
from schemas.topics import topic_specs

if TYPE_CHECKING:  # faust is slow to import: streams.worker only for `motcua streams`
    from streams.worker import WorkerConfig

Say = Callable[[str], None]


def provision(settings: Settings, bootstrap: str, say: Say) -> None:
    admin = admin_client(settings.kafka_config(bootstrap), settings.kafka_bootstrap_timeout_ms)
    try:
        statuses = ensure_topics(admin, topic_specs(settings.topic_prefix),
                                 settings.topic_replication_factor)
    finally:
        admin.close()
    for status in statuses:
        note = f" ({status.note})" if status.note else ""
        say(f"topic {status.name}: {status.status}{note}")
    created = sum(s.status == "created" for s in statuses)
    say(f"topics: {created} created, {len(statuses) - created} already existed"
        + ("" if created else "; nothing changed"))


def keyring(settings: Settings, say: Say) -> Keyring:
    if not (settings.keys_path / REGISTRY_FILE).exists():
        created, _ = init_keystore(settings.keys_path, node_ids())
        say(f"keys: {created} node key pairs created in {settings.keys_path}")
    return Keyring(settings.keys_path)


def start_relay(settings: Settings, engine: Engine, bootstrap: str,
                nodes: list[str] | None = None, metrics: Metrics | None = None,
                **kwargs: float | str) -> tuple[Relay, Loop]:
    relay = Relay(engine, settings.kafka_config(bootstrap), nodes=nodes,
                  topic_prefix=settings.topic_prefix, metrics=metrics,
                  **kwargs)  # type: ignore[arg-type]
    return relay, Loop(relay.run, "relay")


def replica_location(settings: Settings, node: str, db: str | None = None
                     ) -> tuple[str, str | None]:
    """(URL, PostgreSQL schema or None) of ``node``'s replica; ``db`` overrides settings."""
    if db is None:
        return settings.replica_url(node)
    return db.replace("{node}", node), None


def open_replica(settings: Settings, node: str, db: str | None = None, *,
                 create: bool = True) -> Replica:
    """``node``'s replica, created if it does not exist yet (``create`` False: only read).
    A database that cannot be opened is one ``MotcuaError`` naming it."""
    url, schema = replica_location(settings, node, db)
    engine = None
    try:
        parsed = make_url(url)
        if create and parsed.get_backend_name() == "sqlite" and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        if create and schema is not None:
            admin = make_engine(url)
            try:
                with admin.begin() as conn:
                    conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            finally:
                admin.dispose()
        # every transaction can be redone from Kafka: NORMAL sync is enough (make_engine)
        engine = make_engine(url, schema=schema, sqlite_sync="NORMAL")
        return Replica.open(engine, node) if create else Replica(engine, node)
    except MotcuaError:
        if engine is not None:
            engine.dispose()
        raise
    except (ArgumentError, SQLAlchemyError, OSError) as exc:
        if engine is not None:
            engine.dispose()
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        try:
            shown = make_url(url).render_as_string(hide_password=True)
        except ArgumentError:
            shown = "(an unreadable URL)"
        raise MotcuaError(f"{node}'s replica at {shown}: {reason}") from None


def replica_exists(settings: Settings, node: str, db: str | None = None) -> bool:
    """False when ``node``'s SQLite replica file is not there (PostgreSQL: assumed)."""
    url, _ = replica_location(settings, node, db)
    path = sqlite_file(url)
    return path is None or path.exists()


def kafka_security(settings: Settings) -> dict[str, Any]:
    """aiokafka's connection options from the MOTCUA_KAFKA_* settings kafka-python gets
    too (``Settings.kafka_config`` checks them: SASL has a mechanism, user and password)."""
    settings.kafka_config(settings.bootstrap)
    protocol = settings.kafka_security_protocol
    out: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):
        out["ssl_context"] = settings.ssl_context()
    if protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        out["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        out["sasl_plain_username"] = settings.kafka_sasl_username or ""
        out["sasl_plain_password"] = password.get_secret_value() if password else ""
    return out


def worker_config(settings: Settings, *, verify: bool = True,
                  metrics_port: int | None = None) -> WorkerConfig:
    """The stream worker's configuration (``verify`` False: no signature checks)."""
    from streams.worker import WorkerConfig

    group = settings.group_config()
    return WorkerConfig(
        bootstrap=settings.bootstrap, prefix=settings.topic_prefix,
        store_url=settings.streams_store_url,
        keys_path=settings.keys_path if verify else None, data_dir=settings.data_dir,
        batch=settings.streams_batch, cache=settings.streams_cache,
        snapshot_interval=settings.snapshot_interval_ms / 1000,
        fetch_wait_ms=settings.streams_fetch_wait_ms,
        session_timeout_ms=group["session_timeout_ms"],
        heartbeat_interval_ms=group["heartbeat_interval_ms"],
        replication_factor=settings.topic_replication_factor or 1,
        security=kafka_security(settings), metrics_port=metrics_port,
        log_format=settings.log_format, metrics_host=settings.metrics_host,
        ready_lag_seconds=settings.ready_lag_seconds)

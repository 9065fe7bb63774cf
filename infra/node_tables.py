"""The node store's tables (SQLAlchemy Core) and its dossier row format: the contract
between the node services that write them (producers/) and the replicas that hold the same
rows (consumers/). Alembic migrations in ``producers/migrations/`` create them; a test checks
the two agree. One database may hold several nodes (the embedded default
keeps all 106 in one SQLite file): every row says which node it belongs to."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Row

from schemas.enums import Channel, DossierStatus
from schemas.fold import DossierState


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (which has no time zones) and
    PostgreSQL alike, so rows compare equal across the two."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps aware datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


metadata = MetaData()

NODE = String(40)
DOSSIER = String(64)

# Per node: the last origin_seq issued and the hash at the head of its chain. Its row is the
# lock that serialises a node's writers, so seqs are contiguous (a DB sequence is not: its
# values commit out of order).
node_heads = Table(
    "node_heads", metadata,
    Column("node_id", NODE, primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("head_hash", String(64), nullable=False),
)

# The node's own event log, which is also the outbox: the relay publishes rows whose
# published_at is NULL, in origin_seq order, and records where Kafka put them.
outbox = Table(
    "outbox", metadata,
    Column("origin", NODE, primary_key=True),
    Column("origin_seq", BigInteger, primary_key=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("type", String(40), nullable=False),
    Column("dossier_id", DOSSIER, nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("topic", String(40), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("published_at", UtcDateTime),
    Column("kafka_partition", Integer),
    Column("kafka_offset", BigInteger),
)
Index("ix_outbox_dossier", outbox.c.dossier_id)
Index("ix_outbox_unpublished", outbox.c.origin, outbox.c.origin_seq,
      postgresql_where=outbox.c.published_at.is_(None),
      sqlite_where=outbox.c.published_at.is_(None))

# Current state of each dossier this store knows: the fold of its events (schemas.fold).
dossiers = Table(
    "dossiers", metadata,
    Column("dossier_id", DOSSIER, primary_key=True),
    Column("status", SmallInteger),
    Column("channel", String(16)),
    Column("full_online", Boolean, nullable=False),
    Column("procedure_code", String(32)),
    Column("field", String(80)),
    Column("receiving_node", NODE),
    Column("received_at", UtcDateTime),
    Column("due_date", Date),
    Column("original_due_date", Date),
    Column("extensions", SmallInteger, nullable=False),
    Column("components_digitised", Boolean, nullable=False),
    Column("result_digitised", Boolean, nullable=False),
    Column("supplements", SmallInteger, nullable=False),
    Column("resolved_at", UtcDateTime),
    Column("returned_at", UtcDateTime),
    Column("withdrawn_at", UtcDateTime),
    Column("refused_at", UtcDateTime),
    Column("nodes", Text, nullable=False),  # JSON list, sorted
    Column("event_count", Integer, nullable=False),
    Column("last_occurred_at", UtcDateTime),
    Column("last_origin", NODE),
    Column("last_origin_seq", BigInteger),
    Column("anomalies", Text, nullable=False),  # JSON list
    Column("timeline", Text, nullable=False, server_default="[]"),  # JSON [[iso, status]]
)
Index("ix_dossiers_receiving_node", dossiers.c.receiving_node)

hotline_calls = Table(
    "hotline_calls", metadata,
    Column("call_id", DOSSIER, primary_key=True),
    Column("site", NODE, nullable=False),
    Column("category", String(32), nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Column("closed_at", UtcDateTime),
    Column("resolved", Boolean),
)

# Who may publish a node's outbox: one relay at a time (G1 ordering, no double publishing).
relay_leases = Table(
    "relay_leases", metadata,
    Column("node_id", NODE, primary_key=True),
    Column("holder", String(120), nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
)

# One row per simulator run on this store (producers/sim): the parameters a resumed run must
# share with the first, and where each run started and stopped in simulated time.
simulation_runs = Table(
    "simulation_runs", metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=True),
    Column("period_from", Date, nullable=False),
    Column("period_to", Date, nullable=False),
    Column("seed", BigInteger, nullable=False),
    Column("scale", Float, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),  # wall clock
    Column("resumed_from", UtcDateTime),  # simulated time (None: the run began the period)
    Column("stopped_at", UtcDateTime),  # simulated time of its last call (None: still on)
    Column("events_written", BigInteger, nullable=False),
    Column("finished", Boolean, nullable=False),
)


def state_to_row(s: DossierState) -> dict[str, Any]:
    last = s.last_key or (None, None, None)
    return {
        "dossier_id": s.dossier_id, "status": None if s.status is None else int(s.status),
        "channel": None if s.channel is None else s.channel.value,
        "full_online": s.full_online, "procedure_code": s.procedure_code, "field": s.field,
        "receiving_node": s.receiving_node, "received_at": s.received_at,
        "due_date": s.due_date, "original_due_date": s.original_due_date,
        "extensions": s.extensions, "components_digitised": s.components_digitised,
        "result_digitised": s.result_digitised, "supplements": s.supplements,
        "resolved_at": s.resolved_at, "returned_at": s.returned_at,
        "withdrawn_at": s.withdrawn_at, "refused_at": s.refused_at,
        "nodes": json.dumps(sorted(s.nodes)), "event_count": s.event_count,
        "last_occurred_at": last[0], "last_origin": last[1], "last_origin_seq": last[2],
        "anomalies": json.dumps(list(s.anomalies), ensure_ascii=False),
        "timeline": json.dumps([[t.isoformat(), int(st)] for t, st in s.timeline]),
    }


def state_from_row(row: Row[Any]) -> DossierState:
    m = row._mapping
    last = None
    if m["last_occurred_at"] is not None:
        last = (_utc(m["last_occurred_at"]), str(m["last_origin"]), int(m["last_origin_seq"]))
    return DossierState(
        dossier_id=m["dossier_id"],
        status=None if m["status"] is None else DossierStatus(m["status"]),
        channel=None if m["channel"] is None else Channel(m["channel"]),
        full_online=m["full_online"], procedure_code=m["procedure_code"], field=m["field"],
        receiving_node=m["receiving_node"], received_at=m["received_at"],
        due_date=m["due_date"], original_due_date=m["original_due_date"],
        extensions=m["extensions"], components_digitised=m["components_digitised"],
        result_digitised=m["result_digitised"], supplements=m["supplements"],
        resolved_at=m["resolved_at"], returned_at=m["returned_at"],
        withdrawn_at=m["withdrawn_at"], refused_at=m["refused_at"],
        nodes=frozenset(json.loads(m["nodes"])), event_count=m["event_count"],
        last_key=last, anomalies=tuple(json.loads(m["anomalies"])),
        timeline=tuple((datetime.fromisoformat(t), DossierStatus(st))
                       for t, st in json.loads(m["timeline"])))


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)

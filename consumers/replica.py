"""A site's or commune's replica of dossiers (issue 5, first part): events in, rows out.

``Replica.apply`` takes verified events and the source positions they came from, and in ONE
transaction stores the distinct events, re-folds every dossier they touch from all of its
stored events (``schemas.fold``, the same fold the node stores and the stream worker use),
writes the dossier rows in the node store's own row format (``producers.store``), and moves
the positions. Same set of events in, same rows out, whatever the order or the duplicates
(DESIGN.md G3). The Kafka consumer, chain-gap tracking and ``motcua sync`` come next.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from producers.store import state_to_row
from producers.tables import NODE, UtcDateTime
from producers.tables import dossiers as node_dossiers
from schemas.codec import decode, encode
from schemas.events import AnyEvent
from schemas.fold import fold

metadata = MetaData()

#: Every distinct event the replica holds; (origin, origin_seq) is the event's place in its
#: origin's chain, so a second, different event in the same place is a fork, not a copy.
events = Table(
    "replica_events", metadata,
    Column("origin", NODE, primary_key=True),
    Column("origin_seq", BigInteger, primary_key=True),
    Column("event_id", String(36), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("dossier_id", String(64), nullable=False),
    Column("occurred_at", UtcDateTime, nullable=False),
    Column("body", LargeBinary, nullable=False),
)
Index("ix_replica_events_dossier", events.c.dossier_id)

#: The dossier rows, in the node store's format (so "row for row" can be checked).
dossiers = node_dossiers.to_metadata(metadata)

#: Where each source partition was applied up to, written with the rows it produced.
positions = Table(
    "replica_positions", metadata,
    Column("topic", String(200), primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("next_offset", BigInteger, nullable=False),
)


@dataclass
class Applied:
    stored: int = 0  # events new to the replica
    duplicates: int = 0  # already held, same bytes
    forks: list[str] = field(default_factory=list)  # refused: another event holds the place
    dossiers: int = 0  # rows re-folded


class Replica:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)
        self._insert = (postgresql.insert if engine.dialect.name == "postgresql"
                        else sqlite.insert)

    def apply(self, batch: Sequence[AnyEvent],
              moved: Mapping[tuple[str, int], int] | None = None) -> Applied:
        """Store ``batch`` (dossier events, already verified) and re-fold what it touches,
        with the source positions ``moved`` ({(topic, partition): next offset}), all in one
        transaction. Replaying a batch changes nothing."""
        result = Applied()
        with self.engine.begin() as conn:
            places = [(e.origin, e.origin_seq) for e in batch]
            held: dict[tuple[str, int], str] = {}
            for i in range(0, len(places), 400):
                chunk = places[i:i + 400]
                origins = sorted({o for o, _ in chunk})
                seqs = sorted({s for _, s in chunk})
                for row in conn.execute(select(events.c.origin, events.c.origin_seq,
                                               events.c.hash)
                                        .where(events.c.origin.in_(origins),
                                               events.c.origin_seq.in_(seqs))):
                    held[(row.origin, row.origin_seq)] = row.hash
            touched: set[str] = set()
            rows = []
            for e in batch:
                place = (e.origin, e.origin_seq)
                if place in held:
                    if held[place] == e.hash:
                        result.duplicates += 1
                    else:
                        result.forks.append(f"{e.origin} seq {e.origin_seq}: event "
                                            f"{e.event_id} differs from the one held")
                    continue
                held[place] = e.hash
                rows.append({"origin": e.origin, "origin_seq": e.origin_seq,
                             "event_id": e.event_id, "hash": e.hash,
                             "dossier_id": e.dossier_id, "occurred_at": e.occurred_at,
                             "body": encode(e)})
                touched.add(e.dossier_id)
            if rows:
                conn.execute(events.insert(), rows)
                result.stored = len(rows)
            for dossier_id in sorted(touched):
                stored = [decode(bytes(b)) for b in conn.execute(
                    select(events.c.body).where(events.c.dossier_id == dossier_id)).scalars()]
                state = fold(stored)
                if state is None:
                    continue
                conn.execute(delete(dossiers).where(dossiers.c.dossier_id == dossier_id))
                conn.execute(dossiers.insert().values(state_to_row(state)))
                result.dossiers += 1
            for (topic, partition), next_offset in (moved or {}).items():
                ins = self._insert(positions).values(topic=topic, partition=partition,
                                                     next_offset=next_offset)
                conn.execute(ins.on_conflict_do_update(
                    index_elements=["topic", "partition"],
                    set_={"next_offset": ins.excluded.next_offset}))
        return result

    def rows(self) -> list[dict[str, object]]:
        """Every dossier row, sorted: what two converged replicas agree on."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(dossiers).order_by(dossiers.c.dossier_id))]

    def positions(self) -> dict[tuple[str, int], int]:
        with self.engine.connect() as conn:
            return {(r.topic, r.partition): int(r.next_offset)
                    for r in conn.execute(select(positions))}

    def clear(self) -> None:
        with self.engine.begin() as conn:
            for table in (events, dossiers, positions):
                conn.execute(delete(table))


def apply_all(replica: Replica, batches: Iterable[Sequence[AnyEvent]]) -> Applied:
    """Apply several batches; the totals of their results."""
    total = Applied()
    for batch in batches:
        r = replica.apply(batch)
        total.stored += r.stored
        total.duplicates += r.duplicates
        total.forks.extend(r.forks)
        total.dossiers += r.dossiers
    return total

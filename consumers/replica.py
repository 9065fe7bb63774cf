"""A site's or commune's replica of dossiers (issue 5, first part): events in, rows out.

``Replica.apply`` takes verified events and the source positions they came from, and in ONE
transaction stores the distinct events, re-folds every dossier they touch from all of its
stored events (``schemas.fold``, the same fold the node stores and the stream worker use),
writes the dossier rows in the node store's own row format (``producers.store``), and moves
the positions. Same set of events in, same rows out, whatever the order or the duplicates
(DESIGN.md G3). The Kafka consumer, chain-gap tracking and ``motcua sync`` come next.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

from infra.db import insert_for
from producers.store import state_to_row
from producers.tables import NODE, UtcDateTime
from producers.tables import dossiers as node_dossiers
from schemas.codec import decode, encode
from schemas.counters import is_call_event
from schemas.events import GENESIS_HASH, AnyEvent
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
    Column("prev_hash", String(64), nullable=False),
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
    broken: list[str] = field(default_factory=list)  # refused: prev_hash breaks the chain
    dossiers: int = 0  # rows re-folded

    def add(self, other: Applied) -> None:
        """Add another batch's result to this running total."""
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.forks.extend(other.forks)
        self.broken.extend(other.broken)
        self.dossiers += other.dossiers


class Replica:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        metadata.create_all(engine)
        self._insert = insert_for(engine.dialect.name)

    def apply(self, batch: Sequence[AnyEvent],
              moved: Mapping[tuple[str, int], int] | None = None) -> Applied:
        """Store ``batch`` (dossier events, already verified) and re-fold what it touches,
        with the source positions ``moved`` ({(topic, partition): next offset}), all in one
        transaction. Replaying a batch changes nothing."""
        result = Applied()
        with self.engine.begin() as conn:
            # the held neighbours of every place in the batch: (hash, prev_hash)
            wanted = {(e.origin, e.origin_seq + d) for e in batch for d in (-1, 0, 1)}
            held: dict[tuple[str, int], tuple[str, str]] = {}
            for origin in sorted({o for o, _ in wanted}):
                seqs = sorted(s for o, s in wanted if o == origin)
                for i in range(0, len(seqs), 400):
                    for row in conn.execute(
                            select(events.c.origin_seq, events.c.hash, events.c.prev_hash)
                            .where(events.c.origin == origin,
                                   events.c.origin_seq.in_(seqs[i:i + 400]))):
                        held[(origin, row.origin_seq)] = (row.hash, row.prev_hash)
            touched: set[str] = set()
            rows = []
            for e in sorted(batch, key=lambda e: (e.origin, e.origin_seq)):
                place = (e.origin, e.origin_seq)
                if place in held:
                    if held[place][0] == e.hash:
                        result.duplicates += 1
                    else:
                        result.forks.append(f"{e.origin} seq {e.origin_seq}: event "
                                            f"{e.event_id} differs from the one held")
                    continue
                reason = _breaks_chain(e, held)
                if reason is not None:
                    result.broken.append(reason)
                    continue
                held[place] = (e.hash, e.prev_hash)
                rows.append({"origin": e.origin, "origin_seq": e.origin_seq,
                             "event_id": e.event_id, "hash": e.hash, "prev_hash": e.prev_hash,
                             "dossier_id": e.dossier_id, "occurred_at": e.occurred_at,
                             "body": encode(e)})
                if not is_call_event(e):  # calls are kept for their chain only
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

    def gaps(self) -> dict[str, list[tuple[int, int]]]:
        """Per origin, the missing seq ranges (first, last) below its highest held seq: a
        gap is kept until the event arrives (issue 5: "seq 41 arrives, 40 never did")."""
        seqs: dict[str, list[int]] = {}
        with self.engine.connect() as conn:
            for origin, seq in conn.execute(select(events.c.origin, events.c.origin_seq)
                                            .order_by(events.c.origin, events.c.origin_seq)):
                seqs.setdefault(origin, []).append(int(seq))
        out: dict[str, list[tuple[int, int]]] = {}
        for origin, held in seqs.items():
            missing, expect = [], 1
            for seq in held:
                if seq > expect:
                    missing.append((expect, seq - 1))
                expect = seq + 1
            if missing:
                out[origin] = missing
        return out

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


def _breaks_chain(e: AnyEvent, held: Mapping[tuple[str, int], tuple[str, str]]
                  ) -> str | None:
    """Why ``e`` cannot sit in its origin's chain next to what is held, or None."""
    if e.origin_seq == 1 and e.prev_hash != GENESIS_HASH:
        return f"{e.origin} seq 1: prev_hash is not the genesis hash"
    before = held.get((e.origin, e.origin_seq - 1))
    if before is not None and before[0] != e.prev_hash:
        return (f"{e.origin} seq {e.origin_seq}: prev_hash does not match the hash of seq "
                f"{e.origin_seq - 1}")
    after = held.get((e.origin, e.origin_seq + 1))
    if after is not None and after[1] != e.hash:
        return (f"{e.origin} seq {e.origin_seq}: seq {e.origin_seq + 1} held names another "
                "event as its predecessor")
    return None

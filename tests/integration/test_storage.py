"""Envelopes survive storage in both SQL engines the project runs on: the canonical bytes
read back from SQLite and PostgreSQL still decode and verify, and a second event with the
same (origin, origin_seq) is refused by the database itself."""

from __future__ import annotations

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    exc,
    insert,
    select,
)

from schemas.codec import decode, encode
from schemas.integrity import verify
from tests.factories import Chain, registry_of

metadata = MetaData()
events = Table(
    "event_log", metadata,
    Column("event_id", String(36), primary_key=True),
    Column("origin", String(40), nullable=False),
    Column("origin_seq", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    UniqueConstraint("origin", "origin_seq"),
)


def test_envelopes_round_trip_through_the_store(db_engine: Engine) -> None:
    metadata.create_all(db_engine)
    chain = Chain("11977")
    sent = [chain.emit(t) for t in ("dossier.received", "dossier.supplement_requested",
                                    "dossier.refused")]
    with db_engine.begin() as conn:
        conn.execute(insert(events), [
            {"event_id": e.event_id, "origin": e.origin, "origin_seq": e.origin_seq,
             "body": encode(e)} for e in sent])
    with db_engine.connect() as conn:
        rows = conn.execute(select(events.c.body).order_by(events.c.origin_seq)).all()
    back = [decode(bytes(row.body)) for row in rows]
    assert back == sent
    for event in back:
        verify(event, registry_of(chain))

    twin = Chain("11977")  # another writer claiming 11977's seq 1
    clash = twin.emit("dossier.received")
    with pytest.raises(exc.IntegrityError), db_engine.begin() as conn:
        conn.execute(insert(events), {"event_id": clash.event_id, "origin": clash.origin,
                                      "origin_seq": clash.origin_seq, "body": encode(clash)})
    with db_engine.connect() as conn:
        assert len(conn.execute(select(events.c.event_id)).all()) == 3

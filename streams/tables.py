"""The stream worker's state store: folded subjects, counters and source positions, written
together in one transaction per batch, so the counters are exactly the fold of the events up
to the stored positions whatever happens to the process (docs/streams.md, "Why a store").

SQLite (``var/streams.db``) in the embedded default; PostgreSQL in production, where several
workers share it and any of them can take over a partition without rebuilding it.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

TOPIC = String(200)

#: Next source offset to apply, per partition. A batch commits only if the row still holds
#: the offset it started from: a stale worker (after a rebalance) cannot write twice.
positions = Table(
    "stream_positions", metadata,
    Column("topic", TOPIC, primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("next_offset", BigInteger, nullable=False),
    Column("dead_letters", BigInteger, nullable=False),
    Column("worker", String(120), nullable=False),
)

#: Every distinct event of a subject (dossier or call), canonical bytes joined by newlines
#: (canonical JSON never holds a raw newline): enough to re-fold it when a late event sorts
#: before the others, and to rebuild its state after a restart.
subjects = Table(
    "stream_subjects", metadata,
    Column("topic", TOPIC, primary_key=True),
    Column("subject_id", String(64), primary_key=True),
    Column("partition", Integer, nullable=False),
    Column("events", LargeBinary, nullable=False),
)

#: The counters, one partial per source partition (partitions hold disjoint subjects, so the
#: figure is the sum of the partials; see streams/reader.py).
counters = Table(
    "stream_counters", metadata,
    Column("topic", TOPIC, primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("scope", String(60), primary_key=True),
    Column("period", String(10), primary_key=True),
    Column("measure", String(40), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

#: Every place of every origin's chain this store has taken (both event topics: an origin
#: numbers all its events in one sequence), so forks and broken links are refused here as
#: sync refuses them (schemas/chain.py). Written in the batch's transaction; the unique
#: event_id also stops two workers taking the same event at two places at once.
chain = Table(
    "stream_chain", metadata,
    Column("origin", String(40), primary_key=True),
    Column("origin_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("event_id", String(64), nullable=False, unique=True),
)

#: Snapshots still to publish. Written with the counters they announce, deleted once the
#: snapshot is acknowledged (only if no later batch touched the key meanwhile: ``version``).
#: ``as_of``: the newest event time (epoch ms) among the events that moved the partial since
#: it was last published; the snapshot carries it, and a board's "as of" is the newest.
dirty = Table(
    "stream_dirty", metadata,
    Column("topic", TOPIC, primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("scope", String(60), primary_key=True),
    Column("period", String(10), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("as_of", BigInteger, nullable=True),
)

#: What built the store: the counter rules' version (schemas.counters.RULES_VERSION). The
#: stored counters are sums of deltas computed by those rules; under other rules they would
#: no longer equal a recount, so a store built by other rules is refolded from offset 0.
meta = Table(
    "stream_meta", metadata,
    Column("name", String(40), primary_key=True),
    Column("value", String(200), nullable=False),
)

"""The audit archive on disk: every verified event, in append-only segment files per origin
and local day, compressed, with an index (docs/audit.md).

Layout under the archive's folder::

    index.db                              the index (SQLite): positions, segments, events
    segments/<origin>/<YYYY-MM-DD>.jsonl.gz

A segment is a series of gzip members, one per batch that added to it; each member holds
the events' wire bytes, one per line (canonical JSON holds no raw newline). ``zcat`` reads a
whole segment. Appending never rewrites a byte already committed.

Exactly once, and no torn segment after a crash: a batch first appends its members at each
segment's committed length and fsyncs them, then ONE index transaction records the new
lengths, the events and the source positions the batch reached. A crash before the commit
leaves bytes past a committed length: ``Archive.open`` cuts them off (and deletes segments
the index never named), and the consumer reads those records again from the stored
positions. A crash after it leaves nothing to repair.
"""

from __future__ import annotations

import fcntl
import gzip
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    select,
)

from infra.db import insert_ignore, make_engine
from schemas.chain import Link, Place
from schemas.errors import MotcuaError
from schemas.events import AnyEvent
from schemas.merkle import Frontier, leaf_hash
from schemas.note import Checkpoint, Note, sign

metadata = MetaData()
TOPIC = String(200)

#: The next source offset to archive, per partition: committed with the data it follows.
positions = Table(
    "archive_positions", metadata,
    Column("topic", TOPIC, primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("next_offset", BigInteger, nullable=False),
)

#: Each segment file and its committed length: bytes past it were never committed.
segments = Table(
    "archive_segments", metadata,
    Column("path", String(200), primary_key=True),  # relative to the archive's folder
    Column("origin", String(40), nullable=False),
    Column("day", String(10), nullable=False),
    Column("committed_bytes", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),
)

#: Every archived event's place in its origin's chain and in the files.
events = Table(
    "archive_events", metadata,
    Column("origin", String(40), primary_key=True),
    Column("origin_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("subject_id", String(64), nullable=False, index=True),
    Column("occurred_at", String(40), nullable=False),
    Column("path", String(200), nullable=False),
    Column("member_start", BigInteger, nullable=False),  # the gzip member that holds it
    Column("line", BigInteger, nullable=False),  # its line in the segment (0 = the first)
    Column("leaf", String(64), nullable=False),  # its Merkle leaf hash (schemas.merkle), hex
    Column("topic", TOPIC, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
)

#: The checkpoints' tree: leaf i is an archived event. Leaves are appended checkpoint by
#: checkpoint, origins in order and each origin's new seqs in order (only a run without a
#: gap), so a witness holding the same events rebuilds the same tree from the heads.
tree = Table(
    "archive_tree", metadata,
    Column("leaf_index", BigInteger, primary_key=True, autoincrement=False),
    Column("origin", String(40), nullable=False),
    Column("origin_seq", BigInteger, nullable=False),
)

#: The signed checkpoints (C2SP signed notes) this archive issued, by tree size.
checkpoints = Table(
    "archive_checkpoints", metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", String(64), nullable=False),
    Column("note", String, nullable=False),
    Column("issued_at", String(40), nullable=False),
)

#: The frontier of the tree at each checkpoint (``schemas.merkle.Frontier``): the next
#: checkpoint appends only its new leaves to it instead of rebuilding the tree.
frontiers = Table(
    "archive_frontiers", metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("frontier", String, nullable=False),
)

#: Cosignatures other sites gave this archive's checkpoints (C2SP cosignature/v1): the
#: checkpoint's note with the witness's cosignature line, as the witness published it.
cosignatures = Table(
    "archive_cosignatures", metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("witness", String(100), primary_key=True),
    Column("note", String, nullable=False),
)

#: As a witness: every checkpoint of another site this archive checked against its own
#: events and cosigned, in order, with the frontier of that tree (what the next must
#: extend); the heads it names are in its note.
witnessed = Table(
    "archive_witnessed", metadata,
    Column("signer", String(100), primary_key=True),
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", String(64), nullable=False),
    Column("frontier", String, nullable=False),  # schemas.merkle.Frontier.text()
    Column("note", String, nullable=False),  # with this witness's cosignature
    Column("at", String(40), nullable=False),
)

#: As a witness: the checkpoints it would not cosign, with why. A signed checkpoint that
#: contradicts one cosigned before is the proof that its signer forked its history.
witness_refused = Table(
    "archive_witness_refused", metadata,
    Column("signer", String(100), primary_key=True),
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root", String(64), primary_key=True),
    Column("reason", String(500), nullable=False),
    Column("note", String, nullable=False),
    Column("at", String(40), nullable=False),
)

#: Records that were not archived, and why (a forgery, a fork, a chain break, garbage).
refused = Table(
    "archive_refused", metadata,
    Column("topic", TOPIC, primary_key=True),
    Column("partition", Integer, primary_key=True, autoincrement=False),
    Column("offset", BigInteger, primary_key=True, autoincrement=False),
    Column("reason", String(500), nullable=False),
    Column("value", LargeBinary, nullable=True),
)


@dataclass(frozen=True)
class Accepted:
    """A record the consumer verified and the chain rule let in."""
    topic: str
    partition: int
    offset: int
    value: bytes  # the wire bytes, archived as they came
    event: AnyEvent


@dataclass(frozen=True)
class Refused:
    topic: str
    partition: int
    offset: int
    reason: str
    value: bytes | None


def head_lines(heads: Mapping[str, tuple[int, str]]) -> tuple[str, ...]:
    """A checkpoint's extension lines: each origin's head, ``head <origin> <seq> <hash>``."""
    return tuple(f"head {o} {seq} {h}" for o, (seq, h) in sorted(heads.items()))


def parse_prev(extensions: Iterable[str]) -> int | None:
    """The size of the checkpoint before this one (``prev <size>``); None in a checkpoint
    signed before the line existed."""
    for line in extensions:
        parts = line.split()
        if len(parts) == 2 and parts[0] == "prev" and parts[1].isdigit():
            return int(parts[1])
    return None


def parse_heads(extensions: Iterable[str]) -> dict[str, tuple[int, str]]:
    """The heads ``head_lines`` wrote (other extension lines are left alone)."""
    out = {}
    for line in extensions:
        parts = line.split()
        if len(parts) == 4 and parts[0] == "head" and parts[2].isdigit():
            out[parts[1]] = (int(parts[2]), parts[3])
    return out


def segment_path(origin: str, day: str) -> str:
    return f"segments/{origin}/{day}.jsonl.gz"


class ArchiveBusy(MotcuaError):
    """Another process is writing this archive."""


class Archive:
    """One site's archive. The one writer ``open``s it (which repairs what a crash left,
    under an exclusive lock); anything else reads it through ``reader``, which never
    repairs: a reader that cut a segment back while the writer was between writing and
    committing would destroy what the writer is about to commit."""

    def __init__(self, root: Path, engine: Engine, lock: int | None = None) -> None:
        self.root = root
        self.engine = engine
        self._lock = lock

    @classmethod
    def open(cls, root: Path) -> Archive:
        """The writer's archive: created if new, locked, repaired."""
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ArchiveBusy(f"another process is writing the archive in {root} (only one "
                              "`motcua archive` per archive)") from None
        engine = make_engine(f"sqlite:///{root / 'index.db'}")
        metadata.create_all(engine)
        archive = cls(root, engine, fd)
        archive.repair()
        return archive

    @classmethod
    def reader(cls, root: Path) -> Archive:
        """An archive to read (verify, replay, status), beside a running writer."""
        if not (root / "index.db").exists():
            raise MotcuaError(f"no archive in {root}: `motcua archive` (or `motcua up`) "
                              "keeps one")
        return cls(root, make_engine(f"sqlite:///{root / 'index.db'}"))

    def close(self) -> None:
        self.engine.dispose()
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None

    def repair(self) -> list[str]:
        """Cut every segment back to its committed length, and delete segment files the
        index does not name: what a crash between writing and committing left. Returns
        what was repaired, for the log."""
        with self.engine.connect() as conn:
            committed = {r.path: int(r.committed_bytes)
                         for r in conn.execute(select(segments.c.path,
                                                      segments.c.committed_bytes))}
        repaired = []
        base = self.root / "segments"
        for file in sorted(base.rglob("*.jsonl.gz")) if base.exists() else []:
            rel = file.relative_to(self.root).as_posix()
            size = file.stat().st_size
            if rel not in committed:
                file.unlink()
                repaired.append(f"{rel}: never committed, deleted ({size} bytes)")
            elif size > committed[rel]:
                with file.open("r+b") as f:
                    f.truncate(committed[rel])
                    os.fsync(f.fileno())
                repaired.append(f"{rel}: {size - committed[rel]} uncommitted bytes cut")
        for rel, length in committed.items():
            if length and not (self.root / rel).exists():
                repaired.append(f"{rel}: MISSING ({length} committed bytes)")
        return repaired

    # --- reading the index --------------------------------------------------------------

    def positions(self) -> dict[tuple[str, int], int]:
        with self.engine.connect() as conn:
            return {(r.topic, r.partition): int(r.next_offset)
                    for r in conn.execute(select(positions))}

    def chain_around(self, batch: Sequence[AnyEvent]) -> tuple[dict[Place, Link], set[str]]:
        """The held places next to ``batch``'s events and which of their ids are held: what
        ``schemas.chain.judge`` needs."""
        seqs: dict[str, set[int]] = {}
        for e in batch:
            seqs.setdefault(e.origin, set()).update((e.origin_seq - 1, e.origin_seq,
                                                     e.origin_seq + 1))
        ids = [e.event_id for e in batch]
        held: dict[Place, Link] = {}
        held_ids: set[str] = set()
        c = events.c
        with self.engine.connect() as conn:
            for origin, seq, h, prev in self._by_origin(conn, seqs, (c.hash, c.prev_hash)):
                held[(origin, seq)] = Link(h, prev)
            for i in range(0, len(ids), 400):
                held_ids.update(conn.execute(select(c.event_id)
                                             .where(c.event_id.in_(ids[i:i + 400])))
                                .scalars())
        return held, held_ids

    def chain_heads(self) -> dict[str, int]:
        """Each origin's highest seq held (as ``Replica.chain_heads``)."""
        c = events.c
        with self.engine.connect() as conn:
            return {o: int(n) for o, n in conn.execute(
                select(c.origin, func.max(c.origin_seq)).group_by(c.origin))}

    def seqs(self) -> dict[str, list[int]]:
        """Every origin's archived seqs, ascending."""
        c = events.c
        out: dict[str, list[int]] = {}
        with self.engine.connect() as conn:
            for origin, seq in conn.execute(select(c.origin, c.origin_seq)
                                            .order_by(c.origin, c.origin_seq)):
                out.setdefault(origin, []).append(int(seq))
        return out

    def chain_starts(self) -> dict[str, str]:
        """Per origin, the hash of its seq 1: which history the archive holds."""
        c = events.c
        with self.engine.connect() as conn:
            return {r.origin: r.hash for r in conn.execute(
                select(c.origin, c.hash).where(c.origin_seq == 1))}

    def forget_positions(self) -> None:
        """Read the log again from its start (a new log of the same history: what the
        archive holds comes again as duplicates and is dropped)."""
        with self.engine.begin() as conn:
            conn.execute(positions.delete())

    def counts(self) -> tuple[int, int]:
        """(events archived, records refused)."""
        with self.engine.connect() as conn:
            return (int(conn.execute(select(func.count()).select_from(events)).scalar_one()),
                    int(conn.execute(select(func.count()).select_from(refused)).scalar_one()))

    # --- appending ----------------------------------------------------------------------

    def append(self, accepted: Sequence[Accepted], refusals: Sequence[Refused],
               moves: Mapping[tuple[str, int], int]) -> None:
        """Archive a batch: ``accepted`` into their segments, ``refusals`` noted, and each
        partition's position moved to ``moves[tp]``; all or nothing (module docstring)."""
        by_segment: dict[str, list[Accepted]] = {}
        for a in accepted:
            path = segment_path(a.event.origin, a.event.local_date.isoformat())
            by_segment.setdefault(path, []).append(a)
        with self.engine.connect() as conn:
            known = {r.path: (int(r.committed_bytes), int(r.events)) for r in conn.execute(
                select(segments.c.path, segments.c.committed_bytes, segments.c.events)
                .where(segments.c.path.in_(list(by_segment))))} if by_segment else {}
        new_lengths: dict[str, tuple[int, int]] = {}
        rows: list[dict[str, object]] = []
        for path, batch in by_segment.items():
            start, count = known.get(path, (0, 0))
            member = gzip.compress(b"".join(a.value + b"\n" for a in batch), compresslevel=6,
                                   mtime=0)
            _append_at(self.root / path, start, member)
            new_lengths[path] = (start + len(member), count + len(batch))
            rows.extend({"origin": a.event.origin, "origin_seq": a.event.origin_seq,
                         "hash": a.event.hash, "prev_hash": a.event.prev_hash,
                         "event_id": a.event.event_id, "subject_id": a.event.dossier_id,
                         "occurred_at": a.event.occurred_at.isoformat(), "path": path,
                         "member_start": start, "line": count + i,
                         "leaf": leaf_hash(a.value).hex(), "topic": a.topic,
                         "partition": a.partition, "offset": a.offset}
                        for i, a in enumerate(batch))
        with self.engine.begin() as conn:
            for path, (length, count) in new_lengths.items():
                origin, day = path.split("/")[1], path.rsplit("/", 1)[1][:10]
                if path in known:
                    conn.execute(segments.update().where(segments.c.path == path)
                                 .values(committed_bytes=length, events=count))
                else:
                    conn.execute(segments.insert().values(path=path, origin=origin, day=day,
                                                          committed_bytes=length,
                                                          events=count))
            if rows:
                conn.execute(events.insert(), rows)
            if refusals:
                insert_ignore(conn, refused, [{"topic": r.topic, "partition": r.partition,
                                               "offset": r.offset, "reason": r.reason[:500],
                                               "value": r.value} for r in refusals])
            for (topic, partition), end in moves.items():
                done = conn.execute(positions.update()
                                    .where(positions.c.topic == topic,
                                           positions.c.partition == partition)
                                    .values(next_offset=end))
                if done.rowcount == 0:
                    conn.execute(positions.insert().values(topic=topic, partition=partition,
                                                           next_offset=end))

    # --- the checkpoints' tree ----------------------------------------------------------

    def tree_heads(self) -> dict[str, int]:
        """Per origin, the highest seq in the tree."""
        with self.engine.connect() as conn:
            return {r.origin: int(r.top) for r in conn.execute(
                select(tree.c.origin, func.max(tree.c.origin_seq).label("top"))
                .group_by(tree.c.origin))}

    def leaves(self, size: int | None = None, start: int = 0) -> list[tuple[str, int, bytes]]:
        """(origin, seq, leaf hash) of the tree's leaves ``start``..``size - 1`` in order,
        as the index records them (``audit verify`` recomputes them from the segments)."""
        t, e = tree.c, events.c
        query = (select(t.origin, t.origin_seq, e.leaf)
                 .join(events, (e.origin == t.origin) & (e.origin_seq == t.origin_seq))
                 .where(t.leaf_index >= start).order_by(t.leaf_index))
        if size is not None:
            query = query.where(t.leaf_index < size)
        with self.engine.connect() as conn:
            return [(r.origin, int(r.origin_seq), bytes.fromhex(r.leaf))
                    for r in conn.execute(query)]

    def extend_tree(self) -> int:
        """Append every origin's archived run past its tree head (origins in order, seqs in
        order, stopping at a gap); returns the tree's new size."""
        heads = self.tree_heads()
        e = events.c
        with self.engine.begin() as conn:
            size = int(conn.execute(select(func.count()).select_from(tree)).scalar_one())
            rows: list[dict[str, object]] = []
            for origin in sorted(conn.execute(select(e.origin).distinct()).scalars()):
                expected = heads.get(origin, 0) + 1
                for seq in conn.execute(select(e.origin_seq).where(
                        e.origin == origin, e.origin_seq >= expected)
                        .order_by(e.origin_seq)).scalars():
                    if seq != expected:
                        break  # a gap: the rest waits until it fills
                    rows.append({"leaf_index": size + len(rows), "origin": origin,
                                 "origin_seq": seq})
                    expected += 1
            if rows:
                conn.execute(tree.insert(), rows)
            return size + len(rows)

    def checkpoint(self, name: str, key: Any, issued_at: str) -> Note | None:
        """Extend the tree, then sign a checkpoint of it as ``name`` (a C2SP signed note
        whose extension lines are every origin's head: ``head <origin> <seq> <hash>``).
        None if the tree did not grow since the last checkpoint."""
        size = self.extend_tree()
        with self.engine.connect() as conn:
            row = conn.execute(select(checkpoints.c.size, checkpoints.c.root)
                               .order_by(checkpoints.c.size.desc()).limit(1)).first()
            last = int(row.size) if row is not None else None
            kept = conn.execute(select(frontiers.c.frontier)
                                .where(frontiers.c.size == (last or 0))).scalar_one_or_none()
        if last is not None and last >= size:
            return None
        # the last checkpoint's frontier and the new leaves: O(new) instead of O(tree). One
        # that does not give the last root (an archive from before frontiers were kept)
        # is rebuilt from the leaves.
        built = Frontier.parse(kept) if kept is not None else Frontier()
        if row is not None and built.root().hex() != row.root:
            built = Frontier()
        for _, _, leaf in self.leaves(size, built.size):
            built.append(leaf)
        heads = self.tree_heads()
        hashes = self._hashes(heads)
        # "prev" names the checkpoint this one extends: the tree's order depends on where
        # each checkpoint ended, so a witness must see them all, in order
        text = Checkpoint(name, size, built.root(),
                          (f"prev {last or 0}",
                           *head_lines({o: (s, hashes[(o, s)]) for o, s in heads.items()}))
                          ).text()
        note = Note(text, (sign(text, name, key),))
        with self.engine.begin() as conn:
            conn.execute(checkpoints.insert().values(size=size, root=built.root().hex(),
                                                     note=note.encode(), issued_at=issued_at))
            conn.execute(frontiers.delete().where(frontiers.c.size == size))
            conn.execute(frontiers.insert().values(size=size, frontier=built.text()))
        return note

    def _hashes(self, heads: Mapping[str, int]) -> dict[tuple[str, int], str]:
        with self.engine.connect() as conn:
            return {(o, n): h for o, n, h in self._by_origin(
                conn, {o: {n} for o, n in heads.items()}, (events.c.hash,))}

    @staticmethod
    def _by_origin(conn: Any, seqs: Mapping[str, Iterable[int]], columns: Sequence[Any]
                   ) -> Iterator[tuple[Any, ...]]:
        """(origin, seq, *columns) of the archived events at ``seqs`` of each origin: one
        indexed lookup per origin (SQLite scans the whole table for a row-value IN)."""
        c = events.c
        for origin, wanted in seqs.items():
            ordered = sorted(wanted)
            for i in range(0, len(ordered), 500):
                for row in conn.execute(select(c.origin, c.origin_seq, *columns).where(
                        c.origin == origin, c.origin_seq.in_(ordered[i:i + 500]))):
                    yield (row[0], int(row[1]), *row[2:])

    def issued(self) -> list[tuple[int, str, str]]:
        """(size, root hex, signed note) of every checkpoint issued, oldest first."""
        with self.engine.connect() as conn:
            return [(int(r.size), r.root, r.note) for r in conn.execute(
                select(checkpoints).order_by(checkpoints.c.size))]

    def issued_note(self, size: int) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(checkpoints.c.note)
                                .where(checkpoints.c.size == size)).scalar_one_or_none()

    def add_cosignature(self, size: int, witness: str, note: str) -> None:
        with self.engine.begin() as conn:
            insert_ignore(conn, cosignatures, {"size": size, "witness": witness,
                                               "note": note})

    def cosigned(self) -> list[tuple[int, str, str]]:
        """(size, witness, cosigned note) of every cosignature held, oldest first."""
        with self.engine.connect() as conn:
            return [(int(r.size), r.witness, r.note) for r in conn.execute(
                select(cosignatures).order_by(cosignatures.c.size, cosignatures.c.witness))]

    # --- as a witness of another site ---------------------------------------------------

    def leaf_run(self, origin: str, first: int, last: int) -> tuple[list[bytes], str | None]:
        """The leaf hashes of ``origin``'s seqs ``first``..``last`` held here, up to the
        first one missing, and the hash of seq ``last`` if held."""
        e = events.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(e.origin_seq, e.leaf, e.hash).where(
                e.origin == origin, e.origin_seq >= first, e.origin_seq <= last)
                .order_by(e.origin_seq)).all()
        leaves, top = [], None
        for want, r in zip(range(first, last + 1), rows, strict=False):
            if int(r.origin_seq) != want:
                break
            leaves.append(bytes.fromhex(r.leaf))
        if rows and int(rows[-1].origin_seq) == last:
            top = rows[-1].hash
        return leaves, top

    def last_witnessed(self, signer: str) -> tuple[int, str, str, dict[str, int]] | None:
        """(size, root hex, frontier text, heads) of the last checkpoint of ``signer``
        this archive cosigned."""
        w = witnessed.c
        with self.engine.connect() as conn:
            r = conn.execute(select(w.size, w.root, w.frontier, w.note)
                             .where(w.signer == signer).order_by(w.size.desc())
                             .limit(1)).first()
        if r is None:
            return None
        named = parse_heads(Checkpoint.parse(Note.parse(r.note).text).extensions)
        return int(r.size), r.root, r.frontier, {o: seq for o, (seq, _) in named.items()}

    def was_witnessed(self, signer: str, size: int, root: str) -> bool:
        w = witnessed.c
        with self.engine.connect() as conn:
            return conn.execute(select(w.size).where(w.signer == signer, w.size == size,
                                                     w.root == root)).first() is not None

    def record_witnessed(self, signer: str, size: int, root: str, frontier: str, note: str,
                         at: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(witnessed.insert().values(signer=signer, size=size, root=root,
                                                   frontier=frontier, note=note, at=at))

    def record_witness_refusal(self, signer: str, size: int, root: str, reason: str,
                               note: str, at: str) -> None:
        with self.engine.begin() as conn:
            insert_ignore(conn, witness_refused, {"signer": signer, "size": size,
                                                  "root": root, "reason": reason[:500],
                                                  "note": note, "at": at})

    def witnessed_notes(self, signer: str | None = None) -> list[tuple[str, int, str, str]]:
        """(signer, size, root hex, cosigned note) of what this archive cosigned."""
        w = witnessed.c
        query = select(w.signer, w.size, w.root, w.note).order_by(w.signer, w.size)
        if signer is not None:
            query = query.where(w.signer == signer)
        with self.engine.connect() as conn:
            return [(r.signer, int(r.size), r.root, r.note) for r in conn.execute(query)]

    def witness_refusals(self) -> list[tuple[str, int, str, str]]:
        """(signer, size, reason, note) of the checkpoints this archive would not cosign."""
        w = witness_refused.c
        with self.engine.connect() as conn:
            return [(r.signer, int(r.size), r.reason, r.note) for r in conn.execute(
                select(w.signer, w.size, w.reason, w.note).order_by(w.at))]

    # --- reading the segments -----------------------------------------------------------

    def read(self, paths: Iterable[str] | None = None) -> Iterator[tuple[str, bytes]]:
        """(segment path, wire bytes) of every committed event (of the segments ``paths``
        only, when given), segment by segment in path order, each in the order it was
        archived."""
        with self.engine.connect() as conn:
            query = select(segments.c.path, segments.c.committed_bytes).order_by(
                segments.c.path)
            if paths is not None:
                query = query.where(segments.c.path.in_(list(paths)))
            committed = [(r.path, int(r.committed_bytes)) for r in conn.execute(query)]
        for path, length in committed:
            with (self.root / path).open("rb") as f:
                data = f.read(length)
            for line in gzip.decompress(data).split(b"\n"):
                if line:
                    yield path, line


def _append_at(file: Path, start: int, data: bytes) -> None:
    """Write ``data`` at byte ``start`` of ``file`` (created if new), cut whatever followed
    (an earlier crash's leftovers), and make it durable before the index says so."""
    created = not file.exists()
    if created:
        file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("r+b" if not created else "wb") as f:
        f.seek(start)
        f.write(data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())
    if created:  # the new directory entry must survive a power cut too
        fd = os.open(file.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

"""The stream worker's projector (streams/processor.py) against the batch recount: whatever
the interleaving, duplication, subset or batching of the events, and whether its subject
cache holds them or it must read them back from its store, the counters are the recount of
the distinct events it was given."""

from __future__ import annotations

import tempfile
import zlib
from datetime import date
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra.db import make_engine
from schemas.codec import decode
from schemas.counters import recount
from streams.processor import CALLS, DOSSIERS, Processor, Record, open_store
from streams.projector import Projector
from streams.store import StreamStore
from tests.streams_support import simulate

TOPICS = {"dossier-events": DOSSIERS, "hotline-events": CALLS}
PARTITIONS = 3


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, bytes, bytes]]:
    """Two simulated days at a small scale: every lifecycle the simulator knows, calls too,
    several origins whose chains interleave across dossiers."""
    work = simulate(tmp_path_factory.mktemp("pool"), date(2025, 7, 1), date(2025, 7, 2),
                    scale=0.02, seed=11)
    return work.records


def _records(picked: list[tuple[str, bytes, bytes]]) -> list[Record]:
    """As a producer would write them: partition by key, offsets in order of sending."""
    ends: dict[tuple[str, int], int] = {}
    out = []
    for topic, key, value in picked:
        tp = (topic, zlib.crc32(key) % PARTITIONS)
        offset = ends.get(tp, 0)
        ends[tp] = offset + 1
        out.append(Record(tp[0], tp[1], offset, key, value))
    return out


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_interleaving_duplication_and_batching_gives_the_recount(
        pool: list[tuple[str, bytes, bytes]], data: st.DataObject) -> None:
    indices = data.draw(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=400),
                        label="events (a subset, with repeats, in any order)")
    picked = [pool[i] for i in indices]
    records = _records(picked)
    sizes = data.draw(st.lists(st.integers(1, 120), min_size=1, max_size=20), label="batches")
    cache = data.draw(st.sampled_from([1000, 1_000_000]), label="subject cache")
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'store.db'}")
        open_store(engine)
        proc = Processor(engine, TOPICS, None, worker="test", cache_size=cache)
        at, turn = 0, 0
        while at < len(records):
            size = sizes[turn % len(sizes)]
            batch = proc.prepare(records[at:at + size])
            assert not batch.dead, [d.reason for d in batch.dead]
            proc.commit(batch)
            if cache == 1000 and turn % 2:
                proc.forget()  # as after a rebalance: read everything back from the store
            at, turn = at + size, turn + 1
        got = proc.store.counters()
        engine.dispose()
    distinct = {value: None for _, _, value in picked}
    assert got == recount([decode(v) for v in distinct])


def test_only_open_store_empties_a_store_built_by_other_rules(tmp_path: Path) -> None:
    from sqlalchemy import update

    from streams import tables as t

    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    assert open_store(engine) is False  # new: nothing to empty
    Processor(engine, TOPICS, None, worker="w").load_positions([("dossier-events", 0)])
    with engine.begin() as conn:
        conn.execute(update(t.meta).values(value="0"))  # built by other counter rules
    view = StreamStore(engine)  # reading a store never empties it
    assert view.positions() == {("dossier-events", 0): (0, 0)}
    assert open_store(engine) is True  # the worker's start does, and says so
    assert view.positions() == {}
    assert open_store(engine) is False
    engine.dispose()


def test_snapshots_carry_the_newest_event_time_counted(
        pool: list[tuple[str, bytes, bytes]], tmp_path: Path) -> None:
    """A partial's "as of" (what a board shows) is the newest event time among the events
    that moved it: for the province, at least the newest receipt (every receipt moves it)
    and no later than the newest event, with the bounds read from the events here."""
    from datetime import datetime

    import orjson

    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    open_store(engine)
    proc = Processor(engine, TOPICS, None, worker="test")
    records = _records(pool)
    for at in range(0, len(records), 97):  # several batches: the marks keep the newest
        proc.commit(proc.prepare(records[at:at + 97]))
    keys = proc.store.pending(proc.store.positions())
    marks = proc.store.snapshots(keys)
    engine.dispose()
    province = max(as_of for (_, scope, _), _, _, _, as_of in marks
                   if scope == "province" and as_of is not None)
    events = [orjson.loads(v) for _, _, v in pool]
    times = [int(datetime.fromisoformat(e["occurred_at"]).timestamp() * 1000) for e in events]
    newest_receipt = max(t for e, t in zip(events, times, strict=True)
                         if e["type"] == "dossier.received")
    assert newest_receipt <= province <= max(times)
    assert all(as_of is not None for *_, as_of in marks)


def test_a_store_from_before_event_times_gains_the_column_and_keeps_its_marks(
        tmp_path: Path) -> None:
    from sqlalchemy import inspect, text

    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    open_store(engine)
    with engine.begin() as conn:  # the table as an older worker made it, with a mark
        conn.execute(text("DROP TABLE stream_dirty"))
        conn.execute(text("CREATE TABLE stream_dirty (topic VARCHAR(200), partition INTEGER, "
                          "scope VARCHAR(60), period VARCHAR(10), version BIGINT NOT NULL, "
                          "PRIMARY KEY (topic, partition, scope, period))"))
        conn.execute(text("INSERT INTO stream_dirty VALUES ('dossier-events', 0, 'province', "
                          "'2025-07-01', 7)"))
    assert open_store(engine) is False  # not emptied: the counters are still right
    assert "as_of" in {c["name"] for c in inspect(engine).get_columns("stream_dirty")}
    view = StreamStore(engine)
    assert view.snapshots([(("dossier-events", 0), "province", "2025-07-01")])[0][3:] == (7, None)
    engine.dispose()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fold_and_contributions_are_total_and_order_free(
        pool: list[tuple[str, bytes, bytes]], data: st.DataObject) -> None:
    """Any subset of a subject's events, duplicated and in any order (clock skew between
    nodes and moves out of order included, as the simulator makes them), folds to the same
    state, and its contribution is defined."""
    from collections import defaultdict

    from schemas.counters import contribution, fold_subject

    subjects: dict[bytes, list[bytes]] = defaultdict(list)
    for _, key, value in pool:
        subjects[key].append(value)
    key = data.draw(st.sampled_from(sorted(subjects)), label="subject")
    events = [decode(v) for v in subjects[key]]
    calls = events[0].type.startswith("hotline.")
    picked = data.draw(st.lists(st.sampled_from(events), min_size=1, max_size=12),
                       label="events")
    shuffled = data.draw(st.permutations(picked), label="order")
    state = fold_subject(shuffled, calls)
    assert state == fold_subject(sorted(picked, key=lambda e: e.event_id), calls)
    assert isinstance(contribution(state), dict)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_projector_alone_sums_to_the_recount(
        pool: list[tuple[str, bytes, bytes]], data: st.DataObject) -> None:
    """``streams.projector`` with no store: subjects it drops (a small cache) come back
    from the events written so far, as the worker reads them back from its store."""
    indices = data.draw(st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=300),
                        label="events, in delivery order")
    size = data.draw(st.integers(1, 80), label="batch size")
    projector = Projector(cache_size=data.draw(st.sampled_from([5, 1_000_000]),
                                               label="subject cache"))
    written: dict[tuple[str, str], bytes] = {}  # what a store would hold
    totals: dict[tuple[str, str, str], int] = {}
    picked = [pool[i] for i in indices]
    for at in range(0, len(picked), size):
        items = []
        for topic, _key, value in picked[at:at + size]:
            event = decode(value)
            items.append(((TOPICS[topic], event.dossier_id), event, value))
        for key in projector.missing({k: None for k, _, _ in items}):
            projector.restore(key, 0, written.get(key))
        touched, deltas = projector.project(items)
        for key, subject in touched.items():
            written[key] = b"\n".join(subject.raws)
        for delta in deltas.values():
            for ck, v in delta.items():
                totals[ck] = totals.get(ck, 0) + v
    distinct = {value: None for _, _, value in picked}
    assert {k: v for k, v in totals.items() if v} == recount([decode(v) for v in distinct])

"""Replica convergence (DESIGN.md G3): the same set of events, in any order and with any
duplicates, gives identical dossier rows in a SQLite and a PostgreSQL replica, equal to the
fold of the set in the node store's row format."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from consumers.replica import Replica
from infra.db import make_engine
from producers.store import state_to_row
from schemas.events import AnyEvent
from schemas.fold import fold
from tests.factories import T0, Chain

COMMUNE, PHOHIEN, THAIBINH = Chain("11977"), Chain("site-phohien"), Chain("site-thaibinh")


def universe() -> list[AnyEvent]:
    """Four dossiers touched by three origins, with a late extension, a pause and a
    refusal; events of one origin interleave across dossiers (their seqs do too)."""
    out: list[AnyEvent] = []
    for i, site in enumerate((PHOHIEN, THAIBINH, PHOHIEN, THAIBINH)):
        d = f"D-11977-{i:06d}"
        t = T0 + timedelta(hours=i)
        out.append(COMMUNE.emit("dossier.received", d, t, due_date=date(2025, 7, 5 + i)))
        out.append(site.emit("dossier.status_changed", d, t + timedelta(hours=1),
                             from_status=1, to_status=4))
        if i == 1:
            out.append(site.emit("dossier.supplement_requested", d, t + timedelta(days=1)))
            out.append(site.emit("dossier.status_changed", d, t + timedelta(days=2),
                                 from_status=5, to_status=4))
        if i == 2:
            out.append(site.emit("dossier.refused", d, t + timedelta(hours=2)))
            continue
        out.append(site.emit("dossier.deadline_extended", d, t + timedelta(days=3),
                             previous_due_date=date(2025, 7, 5 + i),
                             new_due_date=date(2025, 7, 9 + i)))
        out.append(site.emit("dossier.resolved", d, t + timedelta(days=4)))
        out.append(COMMUNE.emit("dossier.returned", d, t + timedelta(days=5)))
    return out


EVENTS = universe()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, pg_engine: Engine
             ) -> Iterator[tuple[Replica, Replica]]:
    lite = make_engine(f"sqlite:///{tmp_path_factory.mktemp('replica') / 'r.db'}")
    yield Replica(lite), Replica(pg_engine)
    lite.dispose()


def expected_rows(chosen: list[AnyEvent]) -> list[dict[str, Any]]:
    by_dossier: dict[str, list[AnyEvent]] = defaultdict(list)
    for e in chosen:
        by_dossier[e.dossier_id].append(e)
    return [state_to_row(fold(evs)) for _, evs in sorted(by_dossier.items())]  # type: ignore[arg-type]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sets(st.integers(0, len(EVENTS) - 1), min_size=1), st.randoms(use_true_random=False),
       st.integers(1, 6))
def test_any_order_and_duplicates_converge_to_the_fold(
        replicas: tuple[Replica, Replica], chosen: set[int], rng: random.Random,
        batches: int) -> None:
    events = [EVENTS[i] for i in sorted(chosen)]
    want = expected_rows(events)
    for replica in replicas:
        replica.clear()
        delivery = events + rng.choices(events, k=len(events) // 2)  # duplicates
        rng.shuffle(delivery)
        size = max(1, len(delivery) // batches)
        for i in range(0, len(delivery), size):
            result = replica.apply(delivery[i:i + size])
            assert not result.refused
        got = replica.rows()
        assert got == want
    assert replicas[0].rows() == replicas[1].rows()


def test_a_fork_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    replica = Replica(make_engine(f"sqlite:///{tmp_path / 'r.db'}"))
    first = EVENTS[0]
    replica.apply([first])
    before = replica.rows()
    other = Chain("11977", COMMUNE.key)  # same origin and key, seq 1 again, other content
    forged = other.emit("dossier.received", first.dossier_id, first.occurred_at,
                        channel="postal", full_online=False)
    result = replica.apply([forged])
    assert result.refused and result.stored == 0
    assert result.refused[0].reason.startswith("fork:")
    assert replica.rows() == before


def test_replaying_a_batch_changes_nothing_and_positions_move_with_it(tmp_path: Path) -> None:
    replica = Replica(make_engine(f"sqlite:///{tmp_path / 'r.db'}"))
    replica.apply(EVENTS[:10], {("dossier-events", 3): 10})
    rows = replica.rows()
    again = replica.apply(EVENTS[:10], {("dossier-events", 3): 10})
    assert again.stored == 0 and again.duplicates == 10
    assert replica.rows() == rows
    assert replica.positions() == {("dossier-events", 3): 10}


def test_a_gap_is_kept_until_the_missing_event_arrives(tmp_path: Path) -> None:
    replica = Replica(make_engine(f"sqlite:///{tmp_path / 'r.db'}"))
    own = sorted((e for e in EVENTS if e.origin == "11977"), key=lambda e: e.origin_seq)
    replica.apply([own[0], own[1], own[3], own[4]])
    assert replica.gaps() == {"11977": [(3, 3)]}
    assert replica.apply([own[2]]).stored == 1
    assert replica.gaps() == {}


def test_an_event_that_breaks_its_origins_chain_is_refused(tmp_path: Path) -> None:
    replica = Replica(make_engine(f"sqlite:///{tmp_path / 'r.db'}"))
    chain = Chain("13225")
    first = chain.emit("dossier.received", "D-13225-000001", T0,
                       receiving_node="13225")
    chain.head = "0" * 64  # the next event names a predecessor that never existed
    second = chain.emit("dossier.status_changed", "D-13225-000001", T0 + timedelta(hours=1))
    replica.apply([first])
    before = replica.rows()
    result = replica.apply([second])
    assert result.stored == 0 and "prev_hash does not match" in result.refused[0].reason
    assert replica.rows() == before

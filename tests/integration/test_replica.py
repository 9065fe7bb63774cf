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

from consumers.sync.replica import Replica
from infra.db import make_engine
from infra.node_tables import state_to_row
from infra.settings import Settings
from schemas.calls import fold_call, is_call_event
from schemas.events import AnyEvent
from schemas.fold import fold
from tests.conftest import _pg_schema
from tests.factories import T0, Chain

COMMUNE, PHOHIEN, THAIBINH = Chain("11977"), Chain("site-phohien"), Chain("site-thaibinh")
OTHER = Chain("12424")


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
    # a dossier received at a site and handled there: no commune's business
    d = "D-site-000001"
    out.append(PHOHIEN.emit("dossier.received", d, T0, receiving_node="site-phohien"))
    out.append(PHOHIEN.emit("dossier.resolved", d, T0 + timedelta(days=1)))
    # one received at another commune, returned through 11977 (late relevance there)
    d = "D-12424-000001"
    out.append(OTHER.emit("dossier.received", d, T0, receiving_node="12424"))
    out.append(THAIBINH.emit("dossier.resolved", d, T0 + timedelta(days=1)))
    out.append(COMMUNE.emit("dossier.returned", d, T0 + timedelta(days=2)))
    # hotline calls at the sites, one under an id a dossier also has
    for i, (site, call) in enumerate(((PHOHIEN, "call-1"), (THAIBINH, "D-11977-000000"))):
        t = T0 + timedelta(hours=3 + i)
        out.append(site.emit("hotline.call_received", call, t, category="land"))
        out.append(site.emit("hotline.call_closed", call, t + timedelta(minutes=20),
                             category="procedure", resolved=i == 0))
    return out


EVENTS = universe()


@pytest.fixture(scope="module", params=["site-phohien", "11977"])
def replicas(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             pg_admin: Engine, settings: Settings) -> Iterator[tuple[Replica, Replica]]:
    """A SQLite and a PostgreSQL replica of a site, then of a commune."""
    node = request.param
    lite = make_engine(f"sqlite:///{tmp_path_factory.mktemp('replica') / 'r.db'}")
    with _pg_schema(pg_admin, settings.test_pg_url) as pg:
        yield Replica.open(lite, node), Replica.open(pg, node)
    lite.dispose()


def expected(chosen: list[AnyEvent], node: str) -> tuple[list[dict[str, Any]],
                                                          list[dict[str, Any]]]:
    """The fold of the set, as dossier rows (a commune: its own) and call rows (sites)."""
    by_dossier: dict[str, list[AnyEvent]] = defaultdict(list)
    by_call: dict[str, list[AnyEvent]] = defaultdict(list)
    for e in chosen:
        (by_call if is_call_event(e) else by_dossier)[e.dossier_id].append(e)
    rows = []
    for _, evs in sorted(by_dossier.items()):
        state = fold(evs)
        assert state is not None
        if node.startswith("site-") or state.receiving_node == node or node in state.nodes:
            rows.append(state_to_row(state))
    calls = []
    for call_id, evs in sorted(by_call.items()):
        call = fold_call(evs, call_id)
        if node.startswith("site-") and call is not None and call.received_at is not None:
            assert call.category is not None
            calls.append({"call_id": call_id, "site": call.site,
                          "category": call.category.value, "received_at": call.received_at,
                          "closed_at": call.closed_at,
                          "resolved": call.resolved if call.closed_at else None})
    return rows, calls


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sets(st.integers(0, len(EVENTS) - 1), min_size=1), st.randoms(use_true_random=False),
       st.integers(1, 6))
def test_any_order_and_duplicates_converge_to_the_fold(
        replicas: tuple[Replica, Replica], chosen: set[int], rng: random.Random,
        batches: int) -> None:
    events = [EVENTS[i] for i in sorted(chosen)]
    want_rows, want_calls = expected(events, replicas[0].node)
    for replica in replicas:
        replica.clear()
        delivery = events + rng.choices(events, k=len(events) // 2)  # duplicates
        rng.shuffle(delivery)
        size = max(1, len(delivery) // batches)
        for i in range(0, len(delivery), size):
            result = replica.apply(delivery[i:i + size])
            assert not result.refused
        assert replica.rows() == want_rows
        assert replica.call_rows() == want_calls
    assert replicas[0].rows() == replicas[1].rows()


def test_a_fork_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    replica = Replica.open(make_engine(f"sqlite:///{tmp_path / 'r.db'}"))
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
    replica = Replica.open(make_engine(f"sqlite:///{tmp_path / 'r.db'}"))
    replica.apply(EVENTS[:10], {("dossier-events", 3): 10})
    rows = replica.rows()
    again = replica.apply(EVENTS[:10], {("dossier-events", 3): 10})
    assert again.stored == 0 and again.duplicates == 10
    assert replica.rows() == rows
    assert replica.positions() == {("dossier-events", 3): 10}


def test_a_gap_is_kept_until_the_missing_event_arrives(tmp_path: Path) -> None:
    replica = Replica.open(make_engine(f"sqlite:///{tmp_path / 'r.db'}"))
    own = sorted((e for e in EVENTS if e.origin == "11977"), key=lambda e: e.origin_seq)
    replica.apply([own[0], own[1], own[3], own[4]])
    assert replica.gaps() == {"11977": [(3, 3)]}
    assert replica.apply([own[2]]).stored == 1
    assert replica.gaps() == {}


def test_an_event_that_breaks_its_origins_chain_is_refused(tmp_path: Path) -> None:
    replica = Replica.open(make_engine(f"sqlite:///{tmp_path / 'r.db'}"))
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

"""The wall boards' model (consumers/display/board.py) against the batch reading of the
counters topic that ``motcua counters`` does (schemas/snapshot.py): whatever order, repeats
and stale partials the topic holds, a board's figures equal ``scope_figures`` over the
latest partials."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumers.display.app import Hub
from consumers.display.board import Boards, UnknownBoard, all_boards, board_id
from schemas.nodes import all_nodes
from schemas.snapshot import Snapshot, latest, parse, scope_figures

SCOPES = ["province", "commune:11977", "site:site-phohien"]
DAYS = ["2025-07-01", "2025-07-02", "2025-07-03", "2025-07"]  # the month partial is ignored
MEASURES = ["received", "received.online", "received.postal", "handled.late",
            "open.in_progress", "overdue.in_progress", "hotline.calls"]

snapshots = st.builds(
    Snapshot,
    scope=st.sampled_from(SCOPES),
    period=st.sampled_from(DAYS),
    source=st.tuples(st.just("dossier-events"), st.integers(0, 2)),
    next_offset=st.integers(0, 50),
    measures=st.dictionaries(st.sampled_from(MEASURES), st.integers(-5, 40), max_size=5),
)
records = st.lists(st.one_of(snapshots.map(lambda s: (s.key.encode(), s.encode())),
                             st.tuples(st.just(b"junk"), st.binary(max_size=20))),
                   max_size=60)


@settings(max_examples=300, deadline=None)
@given(records)
def test_a_board_sums_the_latest_partials_as_motcua_counters_does(
        recs: list[tuple[bytes, bytes]]) -> None:
    boards = Boards()
    for key, value in recs:
        boards.apply(key, value)
    held = latest(recs)
    for scope in SCOPES:
        for start, end in ((date(2025, 7, 1), date(2025, 7, 3)),
                           (date(2025, 7, 2), date(2025, 7, 2))):
            assert boards.figures(scope, start, end) == scope_figures(held, scope, start, end)
    assert boards.records == len(recs)


def test_a_stale_partial_does_not_roll_a_figure_back() -> None:
    boards = Boards()
    new = Snapshot("province", "2025-07-01", ("dossier-events", 0), 10, {"received": 7})
    old = Snapshot("province", "2025-07-01", ("dossier-events", 0), 4, {"received": 3})
    boards.apply(new.key.encode(), new.encode())
    boards.apply(old.key.encode(), old.encode())  # a worker that lost the partition, late
    day = date(2025, 7, 1)
    assert boards.figures("province", day, day).received == 7


def test_the_board_day_is_the_newest_day_with_a_dossier_received() -> None:
    boards = Boards()
    today = date(2026, 11, 30)
    assert boards.board_day(today) == today  # nothing yet: today, empty
    for period, measures in (("2025-07-02", {"received": 2}),
                             # a stock change on a later day (an overdue date ahead) is no
                             # dossier received: the board's day stays
                             ("2025-07-20", {"overdue.in_progress": 1}),
                             ("2025-07-01", {"received": 5})):
        snap = Snapshot("province", period, ("dossier-events", 0), 1, measures)
        boards.apply(snap.key.encode(), snap.encode())
    assert boards.board_day(today) == date(2025, 7, 2)
    view = boards.view(board_id("province"), today)
    assert view["meta"]["day"] == "2025-07-02" and view["meta"]["is_today"] is False
    assert view["today"]["received"] == 2 and view["month"]["received"] == 7
    assert view["chart"]["online"][:3] == [0, 0, None]  # nothing after the board's day
    assert view["ranking"]["communes"] == 104 and view["ranking"]["on_time"]["rated"] == 0


@pytest.mark.parametrize("name", ["province", "site/site-phohien", "commune/11977",
                                  "commune:11977", "site:site-thaibinh"])
def test_boards_are_named_by_the_reference_nodes(name: str) -> None:
    assert board_id(name).name == name.replace(":", "/")


@pytest.mark.parametrize("name", ["", "provinces", "commune/99999", "site/11977",
                                  "commune/site-phohien", "province/11977", "site/"])
def test_an_unknown_board_is_refused_with_what_exists(name: str) -> None:
    with pytest.raises(UnknownBoard, match="use province, site/<id>"):
        board_id(name)


def test_there_is_a_board_for_the_province_each_site_and_each_commune() -> None:
    names = [b.name for b in all_boards()]
    assert len(names) == 1 + 2 + 104 and len(set(names)) == len(names)


def test_a_newcomer_does_not_swallow_the_change_the_others_are_owed() -> None:
    """A board watched by one client moves; a second client connects before the
    broadcaster runs and is given the new board. The first must still be sent the change
    (the second's view must not become the baseline the change is computed against)."""
    async def scenario() -> dict[str, Any] | None:
        boards, lock = Boards(), threading.Lock()
        hub = Hub(boards, lock, stopping=lambda: False)  # not the process-wide SIGTERM flag
        board = board_id("province")
        first = hub.subscribe(board)
        hub.current(board)  # the first client's whole board
        moved = Snapshot("province", "2025-07-01", ("dossier-events", 0), 3, {"received": 3})
        with lock:
            boards.apply(moved.key.encode(), moved.encode())
        second = hub.subscribe(board)
        assert hub.current(board)[1]["month"]["received"] == 3  # the newcomer's board
        task = asyncio.create_task(hub.run(0.01))
        try:
            item = await asyncio.wait_for(first.get(), 5)
        finally:
            task.cancel()
        hub.unsubscribe(board, second)
        if not isinstance(item, tuple):  # the whole board again, or an end
            return None
        data = [line[6:] for line in item[1].decode().splitlines() if line.startswith("data: ")]
        return dict(json.loads("\n".join(data)))
    # on a thread of its own: a browser test's Playwright keeps an event loop running on
    # this one for the rest of the session
    result: list[dict[str, Any] | None] = []
    runner = threading.Thread(target=lambda: result.append(asyncio.run(scenario())))
    runner.start()
    runner.join(30)
    change = result[0]
    assert change is not None and change["month"]["received"] == 3


def test_the_ranking_names_the_lowest_and_highest_communes_by_rate() -> None:
    """Rates worked out here from the counts given, not by schemas.figures: commune i
    receives 100 dossiers, i of them online (so its online rate is i%), for 30 communes;
    the others receive nothing and have no rate."""
    communes = [n.id for n in all_nodes() if not n.is_site][:30]
    boards = Boards()
    for i, code in enumerate(communes, start=1):
        snap = Snapshot(f"commune:{code}", "2025-07-02", ("dossier-events", i % 3), i,
                        {"received": 100, "received.online": i, "received.in_person": 100 - i})
        boards.apply(snap.key.encode(), snap.encode())
    online = boards.view(board_id("province"), date(2025, 7, 2))["ranking"]["online"]
    assert online["rated"] == 30
    assert [(r["rank"], r["code"], r["rate"]) for r in online["lowest"]] == \
        [(i, communes[i - 1], f"{i}.00") for i in range(1, 11)]
    assert [(r["rank"], r["code"], r["rate"]) for r in online["highest"]] == \
        [(30, communes[29], "30.00"), (29, communes[28], "29.00"), (28, communes[27], "28.00")]


def test_a_board_is_as_of_the_newest_event_time_its_partials_carry() -> None:
    boards = Boards()
    times = ["2025-07-02T01:00:00.000+00:00", "2025-07-02T09:30:00.000+00:00",
             "2025-07-02T03:00:00.000+00:00"]
    for i, at in enumerate(times):
        snap = Snapshot("commune:11977", "2025-07-02", ("dossier-events", i), 1,
                        {"received": 1}, as_of=at)
        assert parse(snap.encode()) == snap
        boards.apply(snap.key.encode(), snap.encode())
    meta = boards.view(board_id("commune/11977"), date(2025, 7, 2))["meta"]
    assert meta["as_of"] == "2025-07-02T09:30:00.000+00:00"
    other = next(n.id for n in all_nodes() if not n.is_site and n.id != "11977")
    assert boards.view(board_id(f"commune/{other}"), date(2025, 7, 2))["meta"]["as_of"] is None

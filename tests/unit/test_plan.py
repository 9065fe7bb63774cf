"""The simulator's plan: calibrated totals are exact, splits are fair and deterministic."""

from __future__ import annotations

import itertools
import random
from datetime import date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producers.sim.calendar import add_business_days, add_office_hours, open_at_or_after
from producers.sim.lifecycle import lifecycle, site_for
from producers.sim.plan import (
    JULY_FROM,
    JULY_ONLINE,
    JULY_RECEIVED,
    JULY_TO,
    allocate,
    hotline_plan,
    plan,
)
from schemas.enums import DossierStatus as S
from schemas.events import LOCAL_TZ
from schemas.moves import MOVES
from schemas.nodes import get_node


def test_july_at_scale_one_is_exactly_the_published_figures() -> None:
    cells = plan(JULY_FROM, JULY_TO, scale=1.0, seed=1)
    total = sum(c.total for c in cells)
    online = sum(c.online for c in cells)
    assert (total, online) == (JULY_RECEIVED, JULY_ONLINE) == (201_034, 167_972)
    assert f"{100 * online / total:.2f}%" == "83.55%"
    assert all(c.total >= 0 and c.in_person >= 0 for c in cells)
    assert len({c.node.id for c in cells}) == 106


def test_other_seeds_keep_the_totals_but_move_the_volumes() -> None:
    a = plan(JULY_FROM, JULY_TO, seed=1)
    b = plan(JULY_FROM, JULY_TO, seed=2)
    assert sum(c.total for c in b) == JULY_RECEIVED and sum(c.online for c in b) == JULY_ONLINE
    assert [c.total for c in a] != [c.total for c in b]
    assert plan(JULY_FROM, JULY_TO, seed=1) == a  # deterministic


def test_wards_are_busier_and_sundays_quiet() -> None:
    cells = plan(JULY_FROM, JULY_TO)
    by_kind: dict[str, list[int]] = {}
    for c in cells:
        by_kind.setdefault(c.node.kind, []).append(c.total)
    mean = {k: sum(v) / len(v) for k, v in by_kind.items()}
    assert mean["phuong"] > 1.5 * mean["xa"]
    per_day = {d: sum(c.total for c in cells if c.day == d) for d in {c.day for c in cells}}
    assert per_day[date(2025, 7, 6)] < per_day[date(2025, 7, 7)] / 5  # a Sunday, a Monday
    assert 6_000 < JULY_RECEIVED / 30 < 7_000


def test_hotline_about_25_calls_a_weekday() -> None:
    calls = hotline_plan(JULY_FROM, JULY_TO)
    assert calls[date(2025, 7, 7).day - 1] == 25
    assert 500 < sum(calls) < 750


@given(total=st.integers(0, 10**6),
       weights=st.lists(st.floats(0.01, 100), min_size=1, max_size=50))
def test_allocate_is_exact_and_fair(total: int, weights: list[float]) -> None:
    shares = allocate(total, weights)
    assert sum(shares) == total
    mass = sum(weights)
    for share, w in zip(shares, weights, strict=True):
        assert abs(share - total * w / mass) < 1 + 1e-6


def test_bad_plan_arguments() -> None:
    with pytest.raises(ValueError, match="before --from"):
        plan(date(2025, 7, 2), date(2025, 7, 1))
    with pytest.raises(ValueError, match="--scale must be positive"):
        plan(JULY_FROM, JULY_TO, scale=0)


def test_office_calendar() -> None:
    friday_late = datetime(2025, 7, 4, 16, 30, tzinfo=LOCAL_TZ)
    assert add_office_hours(friday_late, 1) == datetime(2025, 7, 5, 8, 0, tzinfo=LOCAL_TZ)
    lunch = datetime(2025, 7, 7, 12, 0, tzinfo=LOCAL_TZ)
    assert open_at_or_after(lunch) == datetime(2025, 7, 7, 13, 30, tzinfo=LOCAL_TZ)
    assert add_business_days(date(2025, 7, 4), 1) == date(2025, 7, 7)


def test_lifecycles_are_deterministic_and_ordered() -> None:
    node = get_node("12337")
    for k in range(200):
        ops = lifecycle(random.Random(k), f"D{k}", node, date(2025, 7, 2), "online", False)
        assert ops == lifecycle(random.Random(k), f"D{k}", node, date(2025, 7, 2), "online",
                                False)
        assert ops[0][2] == "receive"
        times = [op[0] for op in ops]
        assert all(a < b for a, b in itertools.pairwise(times)), "ties order by node id"
        assert {op[1] for op in ops} <= {"12337", site_for(node)}


VERB = {"accept": "accept", "refuse": "refuse", "start_processing": "start processing",
        "request_supplement": "request a supplement",
        "supplement_received": "resume after the supplement", "await_fees": "await fees",
        "fees_paid": "resume after fees", "stop": "stop",
        "extend_deadline": "extend the deadline", "resolve": "resolve",
        "return_result": "return the result", "withdraw": "withdraw"}
AFTER = {"refuse": S.REFUSED, "request_supplement": S.SUPPLEMENT_REQUESTED,
         "resolve": S.RESULT_READY, "return_result": S.RESULT_RETURNED,
         "withdraw": S.WITHDRAWN}


def test_every_simulated_life_is_legal_for_the_service() -> None:
    """Walk each planned life through the service's move table (no database): a refused
    call in a simulation would be a simulator bug."""
    for cell in plan(JULY_FROM, JULY_TO, scale=0.05, seed=3):
        for k in range(cell.total):
            channel = "online" if k < cell.online else "in_person"
            seed = cell.day.toordinal() * 1_000_000 + int(cell.node.gso_code) * 1_000 + k
            ops = lifecycle(random.Random(seed), f"D{k}",
                            cell.node, cell.day, channel, False)
            status = S.SUBMITTED_ONLINE if channel == "online" else S.ACCEPTED
            assert all(a[0] < b[0] for a, b in itertools.pairwise(ops)), ops
            for _, _, method, _, kwargs in ops[1:]:
                move = MOVES[VERB[method]]
                assert status in move.allowed_from, (method, status, ops)
                status = move.to_status or AFTER.get(method, status)
                if method == "extend_deadline":
                    assert kwargs["new_due_date"] > ops[0][4]["due_date"]

"""The pure counter contributions and figures (schemas/counters.py)."""

from __future__ import annotations

import random
from datetime import date, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.counters import dossier_contribution, recount
from schemas.events import AnyEvent
from schemas.figures import figures, percent
from schemas.fold import fold
from tests.factories import T0, Chain

COMMUNE = Chain("11977")
SITE = Chain("site-phohien")


def lifecycle(dossier: str, *, resolve_after: int | None = 3, due: date = date(2025, 7, 10),
              channel: str = "online", full: bool = True, pause: bool = False
              ) -> list[AnyEvent]:
    """Received at the commune on T0's day; handled at the site ``resolve_after`` days on."""
    c, s = COMMUNE, SITE
    events = [c.emit("dossier.received", dossier, T0, channel=channel, full_online=full,
                     due_date=due),
              s.emit("dossier.status_changed", dossier, T0 + timedelta(hours=1),
                     from_status=1 if channel == "online" else 2, to_status=4)]
    if pause:
        events.append(s.emit("dossier.supplement_requested", dossier, T0 + timedelta(days=1)))
        events.append(s.emit("dossier.status_changed", dossier,
                             T0 + timedelta(days=1, hours=2), from_status=5, to_status=4))
    if resolve_after is not None:
        events.append(s.emit("dossier.resolved", dossier, T0 + timedelta(days=resolve_after)))
        events.append(c.emit("dossier.returned", dossier,
                             T0 + timedelta(days=resolve_after, hours=3)))
    return events


def day_counters(events: list[AnyEvent], scope: str = "province") -> dict[tuple[str, str], int]:
    return {(p, m): v for (s, p, m), v in recount(events).items() if s == scope and len(p) == 10}


def test_a_lifecycle_counts_where_and_when_each_thing_happened() -> None:
    c = dossier_contribution(fold(lifecycle("D-1", pause=True)))
    for scope in ("province", "commune:11977"):
        assert c[(scope, "2025-07-01", "received")] == 1
        assert c[(scope, "2025-07", "received.online")] == 1
        assert c[(scope, "2025-07-01", "received.full_online")] == 1
        assert c[(scope, "2025-07-04", "handled.early")] == 1  # due 10/7, done 4/7
        assert c[(scope, "2025-07-02", "supplement_requests")] == 1
        assert c[(scope, "2025-07-01", "digitised.components")] == 1
        assert c[(scope, "2025-07-04", "digitised.results")] == 1
    assert not any(k[0].startswith("site:") for k in c)  # counted where it was received
    # in progress from 1/7, paused on 2/7 for two hours, closed on 4/7: the stock nets to 0
    assert sum(v for (s, _, m), v in c.items() if s == "province" and len(_) == 10
               and m.startswith("open.")) == 0


def test_stock_figures_backlog_and_late_rate() -> None:
    events = (lifecycle("D-1", resolve_after=None, due=date(2025, 7, 3))  # never handled
              + lifecycle("D-2", resolve_after=5, due=date(2025, 7, 3))   # handled late 6/7
              + lifecycle("D-3", resolve_after=1))                        # early
    days = day_counters(events)
    f = figures(days, "province", date(2025, 7, 1), date(2025, 7, 3))
    assert (f.received, f.stocks_at_end["open.in_progress"], f.backlog) == (3, 2, 0)
    assert f.stocks_at_end["overdue.in_progress"] == 0  # due 3/7 is not yet late on 3/7
    assert f.late_rate == Decimal("0.00") and f.on_time_rate == Decimal("100.00")
    f = figures(days, "province", date(2025, 7, 4), date(2025, 7, 10))
    assert (f.received, f.backlog) == (0, 2)  # D-1 and D-2 carried over
    assert f.flows["handled.late"] == 1 and f.stocks_at_end["open.in_progress"] == 1
    assert f.stocks_at_end["overdue.in_progress"] == 1  # D-1, still open after its due date
    assert f.late_rate == percent(1 + 1, 0 + 2) == Decimal("100.00")


def test_a_deadline_extension_moves_the_overdue_day() -> None:
    d = "D-EXT"
    events = lifecycle(d, resolve_after=None, due=date(2025, 7, 3))
    events.append(SITE.emit("dossier.deadline_extended", d, T0 + timedelta(days=1),
                            previous_due_date=date(2025, 7, 3), new_due_date=date(2025, 7, 8)))
    c = dossier_contribution(fold(events))
    assert c[("province", "2025-07-09", "overdue.in_progress")] == 1
    assert ("province", "2025-07-04", "overdue.in_progress") not in c


def test_hotline_calls_count_in_their_final_category() -> None:
    call = SITE.emit("hotline.call_received", "C-1", T0, category="procedure")
    closed = SITE.emit("hotline.call_closed", "C-1", T0 + timedelta(days=1), category="land",
                       resolved=True)
    counts = recount([closed, call, call])
    assert counts[("province", "2025-07-01", "hotline.calls.land")] == 1
    assert ("province", "2025-07-01", "hotline.calls.procedure") not in counts
    assert counts[("site:site-phohien", "2025-07-02", "hotline.resolved")] == 1


def test_a_dossier_counts_from_its_receipt_on() -> None:
    events = lifecycle("D-LATE")
    assert recount(events[1:]) == {}
    assert recount(events)[("province", "2025-07-01", "received")] == 1


def test_the_published_online_rate() -> None:
    assert percent(167_972, 201_034) == Decimal("83.55")
    assert percent(1, 0) is None


EVENTS = [e for i in range(4) for e in lifecycle(f"D-H{i}", resolve_after=1 + i,
                                                  pause=i % 2 == 0, channel=["online",
                                                  "in_person", "postal", "online"][i],
                                                  full=i == 0)]


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.lists(st.integers(0, len(EVENTS) - 1),
                                                    max_size=10))
def test_recount_ignores_order_and_duplicates(rng: random.Random, dup: list[int]) -> None:
    messy = EVENTS + [EVENTS[i] for i in dup]
    rng.shuffle(messy)
    assert recount(messy) == recount(EVENTS)

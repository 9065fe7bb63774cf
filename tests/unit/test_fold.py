"""The dossier fold: same set of events, same state, whatever the order or duplication;
total on sequences the service would never produce."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.enums import DossierStatus, Timeliness
from schemas.fold import fold
from tests.factories import T0, Chain


def lifecycle_events(resolved_on: int = 15) -> list:  # type: ignore[type-arg]
    """Received 1/7 due 10/7, extended to 15/7, resolved on July ``resolved_on``."""
    commune, site = Chain("11977"), Chain("site-phohien")
    d = "D-1"
    h = timedelta(hours=1)
    return [
        commune.emit("dossier.received", d, T0),
        site.emit("dossier.status_changed", d, T0 + h, from_status=1, to_status=2),
        site.emit("dossier.status_changed", d, T0 + 2 * h, from_status=2, to_status=4),
        site.emit("dossier.supplement_requested", d, T0 + 3 * h),
        site.emit("dossier.status_changed", d, T0 + 4 * h, from_status=5, to_status=4),
        site.emit("dossier.deadline_extended", d, T0 + 5 * h),
        site.emit("dossier.resolved", d, T0 + timedelta(days=resolved_on - 1)),
        commune.emit("dossier.returned", d, T0 + timedelta(days=resolved_on + 1)),
    ]


def test_in_order_fold() -> None:
    state = fold(lifecycle_events())
    assert state is not None
    assert state.status is DossierStatus.RESULT_RETURNED
    assert state.supplements == 1 and state.extensions == 1
    assert state.nodes == {"11977", "site-phohien"}
    assert str(state.due_date) == "2025-07-15"
    assert state.anomalies == ()


@pytest.mark.parametrize(("day", "expected"), [(14, Timeliness.early),
                                               (15, Timeliness.on_time),
                                               (16, Timeliness.late)])
def test_timeliness_against_the_extended_due_date(day: int, expected: Timeliness) -> None:
    state = fold(lifecycle_events(resolved_on=day))
    assert state is not None and state.timeliness() is expected


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), dup=st.integers(0, 8))
def test_any_order_and_duplicates_give_the_same_state(seed: int, dup: int) -> None:
    events = lifecycle_events()
    rng = random.Random(seed)
    shuffled = events + rng.choices(events, k=dup)
    rng.shuffle(shuffled)
    assert fold(shuffled) == fold(events)


def test_out_of_order_history_folds_and_is_flagged() -> None:
    commune = Chain("11977")
    d = "D-2"
    resolved_first = commune.emit("dossier.resolved", d, T0)  # a clock behind the others
    received = commune.emit("dossier.received", d, T0 + timedelta(minutes=5))
    wrong_from = commune.emit("dossier.status_changed", d, T0 + timedelta(minutes=6),
                              from_status=4, to_status=9)
    state = fold([received, wrong_from, resolved_first])
    assert state is not None
    assert state.status is DossierStatus.RESULT_READY
    assert any("before dossier.received" in a for a in state.anomalies)
    assert any("status_changed from 4 but status was" in a for a in state.anomalies)


def test_two_events_under_one_id_fold_the_same_in_any_order() -> None:
    """A forged twin of an event (same event_id, other content) must not make the state
    depend on which copy arrived last."""
    events = lifecycle_events()
    twin = events[6].model_copy(update={"event_id": events[3].event_id, "hash": "0" * 64})
    assert fold([*events, twin]) == fold([twin, *events])
    assert fold([*events[:3], events[3], twin]) == fold([*events[:3], twin, events[3]])

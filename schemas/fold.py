"""The dossier fold: a dossier's state is a deterministic function of the *set* of its events.

Events are applied in ``(occurred_at, origin, origin_seq)`` order, duplicates (same event_id)
once. So any node holding the same events computes the same state, whatever order and however
often they arrived (DESIGN.md G3). The fold is total: a sequence the dossier service would
never produce (clock skew between nodes, a status change out of order, an event after a final
status) still folds, by a fixed rule, and the oddity is recorded in ``anomalies`` where
operators and auditors can see it. This module is pure: the node store, the stream worker,
the sync consumers and the audit replay all call it, which is why they agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol, TypeVar

from schemas.enums import HANDLED, Channel, DossierStatus, Timeliness
from schemas.events import (
    LOCAL_TZ,
    AnyEvent,
    DossierDeadlineExtended,
    DossierReceived,
    DossierRefused,
    DossierResolved,
    DossierReturned,
    DossierStatusChanged,
    DossierSupplementRequested,
    DossierWithdrawn,
)

EventKey = tuple[datetime, str, int]
FINAL = frozenset({DossierStatus.REFUSED, DossierStatus.WITHDRAWN, DossierStatus.STOPPED,
                   DossierStatus.RESULT_RETURNED})
MAX_ANOMALIES = 20


def event_key(event: AnyEvent) -> EventKey:
    return (event.occurred_at, event.origin, event.origin_seq)


@dataclass(frozen=True)
class DossierState:
    dossier_id: str
    status: DossierStatus | None = None
    channel: Channel | None = None
    full_online: bool = False
    procedure_code: str | None = None
    field: str | None = None
    receiving_node: str | None = None
    received_at: datetime | None = None
    due_date: date | None = None
    original_due_date: date | None = None
    extensions: int = 0
    components_digitised: bool = False
    result_digitised: bool = False
    supplements: int = 0
    resolved_at: datetime | None = None
    returned_at: datetime | None = None
    withdrawn_at: datetime | None = None
    refused_at: datetime | None = None
    nodes: frozenset[str] = frozenset()
    event_count: int = 0
    last_key: EventKey | None = None
    anomalies: tuple[str, ...] = ()
    #: (event time, status) each time the status changed, and at every supplement request:
    #: the stock counters (in progress, paused, overdue) are derived from these intervals.
    timeline: tuple[tuple[datetime, DossierStatus], ...] = ()

    @property
    def received_date(self) -> date | None:
        return None if self.received_at is None else self.received_at.astimezone(LOCAL_TZ).date()

    @property
    def handled_at(self) -> datetime | None:
        """When the dossier left processing: result ready (or returned), or withdrawn."""
        if self.status == DossierStatus.WITHDRAWN:
            return self.withdrawn_at
        if self.status in (DossierStatus.RESULT_READY, DossierStatus.RESULT_RETURNED):
            return self.resolved_at or self.returned_at
        return None

    def timeliness(self) -> Timeliness | None:
        """Early / on time / late for a handled dossier, against its (extended) due date."""
        handled = self.handled_at
        if self.status not in HANDLED or handled is None or self.due_date is None:
            return None
        day = handled.astimezone(LOCAL_TZ).date()
        if day < self.due_date:
            return Timeliness.early
        return Timeliness.on_time if day == self.due_date else Timeliness.late

    def overdue(self, as_of: date) -> bool:
        """An unhandled dossier past its due date on ``as_of`` (a local date)."""
        return (self.status not in HANDLED and self.status not in FINAL
                and self.due_date is not None and as_of > self.due_date)


def fold(events: Iterable[AnyEvent], dossier_id: str | None = None) -> DossierState | None:
    """The state of one dossier from any collection of its events (order and duplicates do
    not matter). ``None`` if there are no events."""
    return fold_with(events, DossierState, apply, dossier_id)


S = TypeVar("S")


def fold_with(events: Iterable[AnyEvent], start: Callable[[str], S],
              step: Callable[[S, AnyEvent], S], subject_id: str | None = None) -> S | None:
    """A subject's state from ``start(subject id)`` and ``step`` over its distinct events in
    fold order (dossiers here, hotline calls in schemas.counters). ``None`` if none."""
    ordered = in_fold_order(events)
    if not ordered:
        return None
    state = start(subject_id or ordered[0].dossier_id)
    for event in ordered:
        state = step(state, event)
    return state


class Folded(Protocol):
    """A subject's folded state: it knows the key of the latest event folded into it."""

    @property
    def last_key(self) -> EventKey | None: ...


F = TypeVar("F", bound=Folded)


def advance(state: F | None, arrived: Sequence[AnyEvent], step: Callable[[F, AnyEvent], F],
            whole: Callable[[], F | None]) -> F | None:
    """The one apply-or-refold rule, for every reader that keeps folded state (node stores,
    the stream worker, replicas): the state once ``arrived`` (new, distinct events of one
    subject, in fold order) join it. If they all sort after the latest event folded,
    ``step`` applies them in order; otherwise (a first event, or a late one that sorts
    inside the history) ``whole()`` folds the subject's complete set again."""
    if state is not None and state.last_key is not None and arrived \
            and event_key(arrived[0]) > state.last_key:
        for event in arrived:
            state = step(state, event)
        return state
    return whole()


def in_fold_order(events: Iterable[AnyEvent]) -> list[AnyEvent]:
    """The distinct events of one subject in the order every fold applies them."""
    # Two different events under one event_id (a forgery or a fork) would otherwise make
    # the result depend on arrival order: keep the one with the smaller hash, and break
    # key ties by hash too.
    unique: dict[str, AnyEvent] = {}
    for e in events:
        kept = unique.get(e.event_id)
        if kept is None or e.hash < kept.hash:
            unique[e.event_id] = e
    return sorted(unique.values(), key=lambda e: (*event_key(e), e.hash))


def apply(state: DossierState, event: AnyEvent) -> DossierState:
    """Apply one event that sorts after every event already in ``state``. Callers with an
    event that sorts earlier (a late arrival) must re-fold the whole set instead."""
    if state.last_key is not None and event_key(event) < state.last_key:
        raise ValueError(f"event {event.event_id} sorts before the dossier's last event; "
                         "re-fold the whole set")
    notes: list[str] = []
    if state.last_key is not None and event_key(event) == state.last_key:
        notes.append(f"two events claim {event.origin} seq {event.origin_seq} (a fork)")
    if not isinstance(event, DossierReceived) and state.received_at is None:
        notes.append(f"{event.type} at {event.occurred_at.isoformat()} before dossier.received")
    if state.status in FINAL and not isinstance(event, DossierReceived):
        notes.append(f"{event.type} after final status {int(state.status)}")
    rule = _APPLY.get(type(event))
    if rule is None:
        notes.append(f"{event.type} is not a dossier event; ignored")
        new = state
    else:
        new = rule(state, event, notes)
    anomalies = (*state.anomalies, *notes)[-MAX_ANOMALIES:] if notes else state.anomalies
    timeline = state.timeline
    if new.status is not None and (new.status != state.status
                                   or isinstance(event, DossierSupplementRequested)):
        timeline = (*timeline, (event.occurred_at, new.status))
    return _evolve(new, nodes=state.nodes | {event.origin}, event_count=state.event_count + 1,
                   last_key=event_key(event), anomalies=anomalies, timeline=timeline)


def _evolve(state: DossierState, **changes: Any) -> DossierState:
    """``dataclasses.replace`` without re-running ``__init__``: ~10× faster, and the fold
    replaces a state twice per event (the stream worker's hot path). Safe because the
    dataclass has no ``__post_init__`` or validation to skip."""
    new = object.__new__(DossierState)
    new.__dict__.update(state.__dict__)
    new.__dict__.update(changes)
    return new


def _received(s: DossierState, e: DossierReceived, notes: list[str]) -> DossierState:
    if s.received_at is not None:
        notes.append(f"dossier.received again at {e.occurred_at.isoformat()}; first kept")
        return s
    d = e.data
    initial = (DossierStatus.SUBMITTED_ONLINE if d.channel is Channel.online
               else DossierStatus.ACCEPTED)
    return _evolve(s, status=s.status or initial, channel=d.channel, full_online=d.full_online,
                   procedure_code=d.procedure_code, field=d.field,
                   receiving_node=d.receiving_node, received_at=e.occurred_at,
                   due_date=s.due_date if s.extensions else d.due_date,
                   original_due_date=d.due_date, components_digitised=d.components_digitised)


def _status_changed(s: DossierState, e: DossierStatusChanged, notes: list[str]
                    ) -> DossierState:
    if s.status is not None and e.data.from_status != s.status:
        notes.append(f"status_changed from {int(e.data.from_status)} but status was "
                     f"{int(s.status)}; set to {int(e.data.to_status)}")
    return _evolve(s, status=e.data.to_status)


def _supplement(s: DossierState, e: DossierSupplementRequested, notes: list[str]
                ) -> DossierState:
    return _evolve(s, status=DossierStatus.SUPPLEMENT_REQUESTED, supplements=s.supplements + 1)


def _extended(s: DossierState, e: DossierDeadlineExtended, notes: list[str]) -> DossierState:
    if s.extensions >= 1:
        notes.append(f"deadline extended again to {e.data.new_due_date} (only one allowed)")
    return _evolve(s, due_date=e.data.new_due_date, extensions=s.extensions + 1)


def _resolved(s: DossierState, e: DossierResolved, notes: list[str]) -> DossierState:
    return _evolve(s, status=DossierStatus.RESULT_READY, resolved_at=e.occurred_at,
                   result_digitised=e.data.result_digitised)


def _returned(s: DossierState, e: DossierReturned, notes: list[str]) -> DossierState:
    if s.resolved_at is None:
        notes.append("dossier.returned without dossier.resolved")
    return _evolve(s, status=DossierStatus.RESULT_RETURNED, returned_at=e.occurred_at)


def _withdrawn(s: DossierState, e: DossierWithdrawn, notes: list[str]) -> DossierState:
    return _evolve(s, status=DossierStatus.WITHDRAWN, withdrawn_at=e.occurred_at)


def _refused(s: DossierState, e: DossierRefused, notes: list[str]) -> DossierState:
    return _evolve(s, status=DossierStatus.REFUSED, refused_at=e.occurred_at)


_APPLY: dict[type, Callable[[DossierState, Any, list[str]], DossierState]] = {
    DossierReceived: _received, DossierStatusChanged: _status_changed,
    DossierSupplementRequested: _supplement, DossierDeadlineExtended: _extended,
    DossierResolved: _resolved, DossierReturned: _returned, DossierWithdrawn: _withdrawn,
    DossierRefused: _refused,
}

"""A hotline call's fold: its state from its events (received, closed), in the same fold
order and with the same tie-breaks as a dossier's (schemas/fold.py). What a call adds to
the counters is schemas/counters.py."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from schemas.enums import HotlineCategory
from schemas.events import AnyEvent, HotlineCallClosed, HotlineCallReceived
from schemas.fold import EventKey, event_key, fold_with


@dataclass(frozen=True)
class CallState:
    call_id: str
    site: str | None = None
    received_at: datetime | None = None
    category: HotlineCategory | None = None
    closed_at: datetime | None = None
    resolved: bool = False
    last_key: EventKey | None = None


def fold_call(events: Iterable[AnyEvent], call_id: str | None = None) -> CallState | None:
    """A hotline call's state from any collection of its events (order and duplicates do not
    matter; same tie-breaks as the dossier fold)."""
    return fold_with(events, CallState, apply_call, call_id)


def apply_call(state: CallState, event: AnyEvent) -> CallState:
    """Apply an event that sorts after every event already in ``state``."""
    if isinstance(event, HotlineCallReceived):
        if state.received_at is not None:
            return replace(state, last_key=event_key(event))
        return replace(state, site=event.origin, received_at=event.occurred_at,
                       category=state.category or event.data.category,
                       last_key=event_key(event))
    if isinstance(event, HotlineCallClosed):
        return replace(state, category=event.data.category, closed_at=event.occurred_at,
                       resolved=event.data.resolved, last_key=event_key(event))
    return replace(state, last_key=event_key(event))  # not a call event: ignored


def is_call_event(event: AnyEvent) -> bool:
    return event.type.startswith("hotline.")

"""The legal moves on an existing dossier, as data: from which statuses each service verb
may start and what event it emits. The dossier service refuses by ``decide``; the
simulator's plan, displays and the audit read the same table."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.enums import DossierStatus
from schemas.events import (
    DossierDeadlineExtended,
    DossierRefused,
    DossierResolved,
    DossierReturned,
    DossierStatusChanged,
    DossierSupplementRequested,
    DossierWithdrawn,
    Event,
)
from schemas.fold import DossierState

S = DossierStatus
OPEN = frozenset({S.ACCEPTED, S.IN_PROGRESS, S.SUPPLEMENT_REQUESTED, S.AWAITING_FEES})


@dataclass(frozen=True)
class Move:
    """A service operation on an existing dossier: where it may start, what it emits."""

    verb: str
    allowed_from: frozenset[DossierStatus]
    event: type[Event]  # type: ignore[type-arg]
    to_status: DossierStatus | None = None  # for dossier.status_changed


MOVES = {m.verb: m for m in (
    Move("accept", frozenset({S.SUBMITTED_ONLINE}), DossierStatusChanged, S.ACCEPTED),
    Move("refuse", frozenset({S.SUBMITTED_ONLINE, S.ACCEPTED}), DossierRefused),
    Move("start processing", frozenset({S.ACCEPTED}), DossierStatusChanged, S.IN_PROGRESS),
    Move("request a supplement", frozenset({S.ACCEPTED, S.IN_PROGRESS}),
         DossierSupplementRequested),
    Move("resume after the supplement", frozenset({S.SUPPLEMENT_REQUESTED}),
         DossierStatusChanged, S.IN_PROGRESS),
    Move("await fees", frozenset({S.IN_PROGRESS}), DossierStatusChanged, S.AWAITING_FEES),
    Move("resume after fees", frozenset({S.AWAITING_FEES}), DossierStatusChanged,
         S.IN_PROGRESS),
    Move("stop", OPEN, DossierStatusChanged, S.STOPPED),
    Move("extend the deadline", OPEN, DossierDeadlineExtended),
    Move("resolve", frozenset({S.IN_PROGRESS}), DossierResolved),
    Move("return the result", frozenset({S.RESULT_READY}), DossierReturned),
    Move("withdraw", frozenset({S.SUBMITTED_ONLINE} | OPEN), DossierWithdrawn),
)}



def decide(state: DossierState, verb: str) -> str | None:
    """Why the move ``verb`` (a key of ``MOVES``) may not be made on a dossier in
    ``state``, or None if it may."""
    rule = MOVES[verb]
    now = state.status
    if now not in rule.allowed_from:
        allowed = ", ".join(f"{int(s)} {s.label_vi}" for s in sorted(rule.allowed_from))
        here = "no status" if now is None else f"status {int(now)} ({now.label_vi})"
        return (f"dossier {state.dossier_id} is in {here}; cannot {verb} "
                f"(allowed from: {allowed})")
    if rule.event is DossierDeadlineExtended and state.extensions >= 1:
        return (f"dossier {state.dossier_id}: the deadline was already extended once (to "
                f"{state.due_date}); a second extension is not allowed")
    return None

"""Counter contributions: what one dossier (or hotline call) adds to the published figures.

Pure, like the fold it reads. The stream worker keeps each subject's contribution and moves
the counters by (new − old) when the subject's state changes, so the totals are exact however
often and in whatever order its events arrive; the audit recount sums the same function over
the log. Both therefore agree by construction (DESIGN.md G2, G4).

A counter is keyed by (scope, period, measure):

* scope: ``province``, and the node that received the dossier (``commune:11977`` or
  ``site:site-phohien``); a hotline call counts for the province and the site that took it.
* period: a local day ``2025-07-01`` or a local month ``2025-07``. Every value counts in the
  period of its *event time*, however late the event arrives.
* measure: a FLOW (how many things happened in the period) or a STOCK change (+1 when a
  dossier enters "in progress", −1 when it leaves). The stock on a day is the sum of its
  changes over all periods up to that day; ``figures()`` does that sum.

Rules decided here (DESIGN.md is silent; docs/streams.md lists them):

* A dossier counts from its ``dossier.received`` on; events of a dossier whose receipt has not
  arrived yet contribute nothing until it does.
* In progress = statuses 1, 2, 4; paused = 5, 6, 8 (DESIGN.md); handled = 7, 9, 10 and refused
  (3) close a dossier. Overdue = open on a local day after its (possibly extended) due date,
  judged against the due date the dossier has now.
* Supplement requests = every entry into status 5.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime, time, timedelta
from functools import lru_cache

from schemas.calls import CallState, fold_call, is_call_event
from schemas.enums import PAUSED, DossierStatus, HotlineCategory, Timeliness
from schemas.events import (
    LOCAL_TZ,
    AnyEvent,
)
from schemas.fold import DossierState, fold

CounterKey = tuple[str, str, str]  # (scope, period, measure)

#: Bump on any change to what a fold or a contribution yields: stream stores built by other
#: rules are then refolded from the log (streams/processor.py). 2: the stream worker refuses
#: forks and broken chains (schemas/chain.py), so it may count fewer events than under 1.
RULES_VERSION = "2"
Contribution = dict[CounterKey, int]

PROVINCE = "province"

RECEIVED = "received"
FULL_ONLINE = "received.full_online"
CHANNELS = ("in_person", "online", "postal")
HANDLED_BY = tuple(f"handled.{t.value}" for t in Timeliness)

IN_PROGRESS_STATUSES = frozenset({DossierStatus.SUBMITTED_ONLINE, DossierStatus.ACCEPTED,
                                  DossierStatus.IN_PROGRESS})

#: Flows: counted in the period where they happened.
FLOWS: tuple[str, ...] = (
    RECEIVED, *(f"received.{c}" for c in CHANNELS), FULL_ONLINE,
    *HANDLED_BY, "supplement_requests", "withdrawn", "refused",
    "digitised.components", "digitised.results",
    "hotline.calls", *(f"hotline.calls.{c.value}" for c in HotlineCategory),
    "hotline.closed", "hotline.resolved",
)
#: Stock changes: the level at the end of a period is the sum over all periods up to it.
STOCKS: tuple[str, ...] = ("open.in_progress", "open.paused",
                           "overdue.in_progress", "overdue.paused")
MEASURES = frozenset(FLOWS + STOCKS)


def node_scope(node_id: str) -> str:
    return f"site:{node_id}" if node_id.startswith("site-") else f"commune:{node_id}"


def day_of(moment: datetime) -> date:
    return moment.astimezone(LOCAL_TZ).date()


@lru_cache(maxsize=65_536)  # a dossier's moments are looked up again at each of its events
def periods_of(moment: datetime) -> tuple[str, str]:
    """The local day and month a moment belongs to."""
    d = day_of(moment)
    return d.isoformat(), d.isoformat()[:7]


def _add(out: Contribution, scopes: tuple[str, ...], moment: datetime, measure: str,
         value: int = 1) -> None:
    for period in periods_of(moment):
        for scope in scopes:
            key = (scope, period, measure)
            total = out.get(key, 0) + value
            if total:
                out[key] = total
            else:
                out.pop(key, None)


def _category(status: DossierStatus) -> str | None:
    if status in IN_PROGRESS_STATUSES:
        return "in_progress"
    if status in PAUSED:
        return "paused"
    return None  # handled, refused: closed


def dossier_contribution(state: DossierState | None) -> Contribution:
    """Everything one dossier adds to the counters, given its folded state."""
    out: Contribution = {}
    if state is None or state.received_at is None or state.receiving_node is None:
        return out
    scopes = (PROVINCE, node_scope(state.receiving_node))
    received = state.received_at
    _add(out, scopes, received, RECEIVED)
    if state.channel is not None:
        _add(out, scopes, received, f"received.{state.channel.value}")
    if state.full_online:
        _add(out, scopes, received, FULL_ONLINE)
    if state.components_digitised:
        _add(out, scopes, received, "digitised.components")
    handled = state.handled_at
    timeliness = state.timeliness()
    if handled is not None and timeliness is not None:
        _add(out, scopes, handled, f"handled.{timeliness.value}")
    if state.status == DossierStatus.WITHDRAWN and state.withdrawn_at is not None:
        _add(out, scopes, state.withdrawn_at, "withdrawn")
    if state.status == DossierStatus.REFUSED and state.refused_at is not None:
        _add(out, scopes, state.refused_at, "refused")
    if state.result_digitised and state.resolved_at is not None:
        _add(out, scopes, state.resolved_at, "digitised.results")
    for moment, status in state.timeline:
        if status == DossierStatus.SUPPLEMENT_REQUESTED:
            _add(out, scopes, moment, "supplement_requests")
    overdue_from = None
    if state.due_date is not None:  # the first moment of the day after the due date
        overdue_from = datetime.combine(state.due_date + timedelta(days=1), time(),
                                        tzinfo=LOCAL_TZ)
    for category, start, end in _open_intervals(state):
        _add(out, scopes, start, f"open.{category}")
        if end is not None:
            _add(out, scopes, end, f"open.{category}", -1)
        if overdue_from is not None and (end is None or end > overdue_from):
            _add(out, scopes, max(start, overdue_from), f"overdue.{category}")
            if end is not None:
                _add(out, scopes, end, f"overdue.{category}", -1)
    return out


def _open_intervals(state: DossierState) -> Iterator[tuple[str, datetime, datetime | None]]:
    """(category, start, end) for each stretch in progress or paused; end None = still so.
    Consecutive entries of one category are one stretch."""
    current: str | None = None
    since: datetime | None = None
    for moment, status in state.timeline:
        category = _category(status)
        if category == current:
            continue
        if current is not None and since is not None:
            yield current, since, moment
        current, since = category, moment
    if current is not None and since is not None:
        yield current, since, None


# --- hotline calls ----------------------------------------------------------------------

def call_contribution(state: CallState | None) -> Contribution:
    out: Contribution = {}
    if state is None or state.received_at is None or state.site is None:
        return out
    scopes = (PROVINCE, node_scope(state.site))
    _add(out, scopes, state.received_at, "hotline.calls")
    if state.category is not None:
        _add(out, scopes, state.received_at, f"hotline.calls.{state.category.value}")
    if state.closed_at is not None:
        _add(out, scopes, state.closed_at, "hotline.closed")
        if state.resolved:
            _add(out, scopes, state.closed_at, "hotline.resolved")
    return out


def fold_subject(events: Iterable[AnyEvent], calls: bool) -> DossierState | CallState | None:
    """A dossier's (``calls`` False) or a hotline call's state from its events."""
    return fold_call(events) if calls else fold(events)


def contribution(state: DossierState | CallState | None) -> Contribution:
    """What a dossier or call in this state adds to the counters."""
    if isinstance(state, CallState):
        return call_contribution(state)
    return dossier_contribution(state)


def recount(events: Iterable[AnyEvent]) -> dict[CounterKey, int]:
    """The batch recount: every counter from a collection of events (an auditor's figure,
    and the reference the live counters are tested against)."""
    by_subject: dict[tuple[bool, str], list[AnyEvent]] = defaultdict(list)
    for e in events:
        by_subject[(is_call_event(e), e.dossier_id)].append(e)
    totals: dict[CounterKey, int] = defaultdict(int)
    for subject_events in by_subject.values():
        calls = is_call_event(subject_events[0])
        for key, value in contribution(fold_subject(subject_events, calls)).items():
            totals[key] += value
    return {k: v for k, v in totals.items() if v}


def diff(old: Mapping[CounterKey, int], new: Mapping[CounterKey, int]) -> Contribution:
    """new − old, without zeros."""
    out = {k: v - old.get(k, 0) for k, v in new.items() if v != old.get(k, 0)}
    for k, v in old.items():
        if k not in new and v:
            out[k] = -v
    return out


def is_day(period: str) -> bool:
    return len(period) == 10

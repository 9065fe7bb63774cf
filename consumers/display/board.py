"""What the wall boards show, from the ``counters`` topic: pure, no I/O.

``Boards`` keeps the latest partial of every key (``schemas.snapshot``'s rule: the highest
source position wins, so a stale worker's late record cannot roll a figure back) and, per
scope, the day counters summed over source partitions, updated by (new - old) as partials
replace each other. A board's figures are then ``schemas.figures`` over those day counters:
the same code as ``motcua counters``, so the two agree by construction.

The board's day is the newest local day with a dossier received in the province (its
"today" when that is today's date, else shown with its date): a board fed by a simulated
July, or opened early before the first dossier of the day, never shows an empty "today"
as if it were live.
"""

from __future__ import annotations

import calendar
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from schemas.counters import CHANNELS, PROVINCE, RECEIVED, is_day, node_scope
from schemas.enums import HotlineCategory
from schemas.errors import MotcuaError
from schemas.figures import Figures, figures
from schemas.nodes import SITES, UnknownNode, all_nodes, get_node
from schemas.snapshot import Snapshot, parse

KINDS = ("province", "site", "commune")
LOWEST = 10  # communes highlighted at the bottom of each ranking
HIGHEST = 3  # and shown at its top


class UnknownBoard(MotcuaError):
    """A board that does not exist (an unknown kind, site or commune code)."""


@dataclass(frozen=True)
class BoardId:
    kind: str  # province | site | commune
    node: str | None = None  # a site id or a commune's GSO code

    @property
    def scope(self) -> str:
        return PROVINCE if self.node is None else node_scope(self.node)

    @property
    def name(self) -> str:
        return "province" if self.node is None else f"{self.kind}/{self.node}"

    @property
    def title(self) -> str:
        return "Tỉnh Hưng Yên" if self.node is None else get_node(self.node).name


def board_id(name: str) -> BoardId:
    """``province``, ``site/<id>`` or ``commune/<gso>`` (also with ``:``), checked against
    the reference nodes."""
    kind, _, ident = name.replace(":", "/").partition("/")
    if kind == "province" and not ident:
        return BoardId("province")
    try:
        node = get_node(ident) if ident else None
    except UnknownNode:
        node = None
    if node is not None and kind == "site" and node.id in SITES:
        return BoardId("site", node.id)
    if node is not None and kind == "commune" and node.id not in SITES:
        return BoardId("commune", node.id)
    raise UnknownBoard(f"no board {name!r}: use province, site/<id> ({', '.join(SITES)}) or "
                       "commune/<5-digit GSO code>")


def all_boards() -> list[BoardId]:
    return [BoardId("province"), *(BoardId("site", s) for s in SITES),
            *(BoardId("commune", n.id) for n in all_nodes() if not n.is_site)]


def _rate(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


class Boards:
    """The latest partials of the counters topic and every scope's day counters."""

    def __init__(self) -> None:
        self._partials: dict[str, Snapshot] = {}
        #: scope -> (day, measure) -> the sum over source partitions
        self._days: dict[str, dict[tuple[str, str], int]] = defaultdict(dict)
        self._published: dict[str, str] = {}  # scope -> newest ``published_at`` seen
        self._as_of: dict[str, str] = {}  # scope -> newest event time counted (``as_of``)
        self._changed: set[str] = set()
        self.records = 0  # records read: the position the boards stand at
        self.skipped = 0  # records that were not snapshots (logged by the feed)
        self.newest_day: str | None = None  # the newest day with a dossier received

    # --- feeding ----------------------------------------------------------------------

    def apply(self, key: bytes | None, value: bytes | None) -> bool:
        """Take one record of the counters topic; False if it is not a snapshot (skipped,
        counted). A partial older than the one held (a lower source position) is ignored."""
        self.records += 1
        snap = parse(value)
        if snap is None or not key:
            self.skipped += 1
            return False
        name = key.decode("utf-8", "replace")
        old = self._partials.get(name)
        if old is not None and snap.next_offset < old.next_offset:
            return True
        self._partials[name] = snap
        if snap.published_at > self._published.get(snap.scope, ""):
            self._published[snap.scope] = snap.published_at
        if snap.as_of > self._as_of.get(snap.scope, ""):
            self._as_of[snap.scope] = snap.as_of
        if not is_day(snap.period):
            return True  # boards read day partials only (as ``scope_figures``)
        days = self._days[snap.scope]
        moved = dict(snap.measures)
        if old is not None:
            for measure, value_ in old.measures.items():
                moved[measure] = moved.get(measure, 0) - value_
        for measure, delta in moved.items():
            if delta:
                total = days.get((snap.period, measure), 0) + delta
                if total:
                    days[(snap.period, measure)] = total
                else:
                    days.pop((snap.period, measure), None)
        if moved and any(moved.values()):
            self._changed.add(snap.scope)
            if snap.scope == PROVINCE and days.get((snap.period, RECEIVED), 0) > 0 \
                    and (self.newest_day is None or snap.period > self.newest_day):
                self.newest_day = snap.period
                self._changed.add("*")  # every board's day moved
        return True

    def take_changed(self) -> set[str]:
        """Scopes whose figures moved since the last call (``*``: every board's day)."""
        changed, self._changed = self._changed, set()
        return changed

    # --- reading ----------------------------------------------------------------------

    def figures(self, scope: str, start: date, end: date) -> Figures:
        """A scope's figures for local days ``start``..``end`` (``schemas.figures``)."""
        return figures(self._days.get(scope, {}), scope, start, end)

    def board_day(self, today: date) -> date:
        """The day a board shows: the newest day with a dossier received, else ``today``."""
        return date.fromisoformat(self.newest_day) if self.newest_day else today

    def view(self, board: BoardId, today: date) -> dict[str, Any]:
        """Everything a board shows, as JSON-ready sections (a change is sent per section)."""
        day = self.board_day(today)
        first = day.replace(day=1)
        scope = board.scope
        day_fig = self.figures(scope, day, day)
        month_fig = self.figures(scope, first, day)
        out: dict[str, Any] = {
            "meta": {"board": board.name, "kind": board.kind, "title": board.title,
                     "scope": scope, "day": day.isoformat(), "is_today": day == today,
                     "month": first.isoformat()[:7],
                     "published_at": self._published.get(scope),
                     "as_of": self._as_of.get(scope)},
            "today": _figures(day_fig),
            "month": _figures(month_fig),
            "chart": self._chart(scope, first, day),
        }
        if board.kind != "commune":
            out["hotline"] = {c.value: day_fig.flows[f"hotline.calls.{c.value}"]
                              for c in HotlineCategory} | {
                                  "total": day_fig.flows["hotline.calls"]}
        if board.kind == "province":
            out["ranking"] = self._ranking(first, day)
        return out

    def _chart(self, scope: str, first: date, day: date) -> dict[str, Any]:
        """Dossiers received per day of the month by channel, up to the board's day."""
        days = self._days.get(scope, {})
        last = calendar.monthrange(first.year, first.month)[1]
        labels = [first.replace(day=d).isoformat() for d in range(1, last + 1)]
        return {"days": labels, "until": day.isoformat(),
                **{c: [days.get((d, f"received.{c}"), 0) if d <= day.isoformat() else None
                       for d in labels] for c in CHANNELS}}

    def _ranking(self, first: date, day: date) -> dict[str, Any]:
        """Communes by on-time rate and by online rate this month: the LOWEST lowest (rank
        1 = lowest) and the HIGHEST highest of those with a rate, and how many have one.
        Only what the board shows: the whole list made the province's change 20 kB, sent
        to every watcher at each update (bench.display)."""
        rows = []
        for node in all_nodes():
            if node.is_site:
                continue
            fig = self.figures(node_scope(node.id), first, day)
            rows.append({"code": node.id, "name": node.name, "received": fig.received,
                         "online_rate": _rate(fig.online_rate),
                         "on_time_rate": _rate(fig.on_time_rate)})

        def ranked(field: str) -> dict[str, Any]:
            rated = sorted((r for r in rows if r[field] is not None),
                           key=lambda r: (Decimal(str(r[field])), r["code"]))
            lowest = [{"rank": i + 1, "code": r["code"], "name": r["name"],
                       "rate": r[field]} for i, r in enumerate(rated[:LOWEST])]
            highest = [{"rank": len(rated) - i, "code": r["code"], "name": r["name"],
                        "rate": r[field]} for i, r in enumerate(reversed(rated))][:HIGHEST]
            return {"rated": len(rated), "lowest": lowest, "highest": highest}
        return {"on_time": ranked("on_time_rate"), "online": ranked("online_rate"),
                "communes": len(rows)}


def _figures(fig: Figures) -> dict[str, Any]:
    """The figures a tile shows (a subset of ``Figures.as_dict``, the same names)."""
    d = fig.as_dict()
    keys = ("received", *(f"received.{c}" for c in CHANNELS), "received.full_online",
            "online_rate", "handled", "handled.early", "handled.on_time", "handled.late",
            "on_time_rate", "late_rate", "in_progress", "paused", "overdue.in_progress",
            "overdue.paused", "supplement_requests", "refused", "withdrawn",
            "digitised.components", "digitised.results")
    out = {k: d[k] for k in keys}
    out["overdue"] = fig.stocks_at_end["overdue.in_progress"] + fig.stocks_at_end["overdue.paused"]
    return out

"""``motcua streams``, ``motcua counters`` and ``motcua dead-letters``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from infra.cli.args import parse_date, seconds
from infra.cli.bootstrap import provision, worker_config
from infra.cli.ops import add_metrics_port
from infra.settings import Settings
from schemas.counters import CHANNELS, PROVINCE
from schemas.enums import HotlineCategory
from schemas.errors import MotcuaError
from schemas.events import LOCAL_TZ
from schemas.figures import Figures
from schemas.nodes import SITES, UnknownNode, get_node
from schemas.topics import COUNTERS, DEAD_LETTERS, DOSSIER_EVENTS, HOTLINE_EVENTS

Say = Callable[[str], None]


def parse_scope(text: str) -> str:
    """``province``, ``site:ID`` or ``commune:CODE``, checked against the reference nodes."""
    if text == PROVINCE:
        return text
    kind, _, ident = text.partition(":")
    try:
        node = get_node(ident) if ident else None
    except UnknownNode as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if kind == "site" and node is not None and node.id in SITES:
        return f"site:{node.id}"
    if kind == "commune" and node is not None and node.id not in SITES:
        return f"commune:{node.id}"
    raise argparse.ArgumentTypeError(
        f"{text!r}: use province, site:ID ({', '.join(sorted(SITES))}) or commune:CODE "
        "(a 5-digit code from `motcua nodes`)")


def cmd_streams(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    from streams.worker import run  # faust is slow to import: only for this command

    provision(settings, settings.bootstrap, lambda _line: None)
    say(f"streams worker: store {settings.streams_store_url}, "
        f"verify signatures: {'no' if args.no_verify else 'yes'}")
    return run(worker_config(settings, verify=not args.no_verify,
                             metrics_port=args.metrics_port), loglevel=args.loglevel)


def cmd_counters(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    from dataclasses import replace

    from schemas.snapshot import scope_figures
    from streams.reader import read_snapshots

    snaps = read_snapshots(settings.kafka_config(settings.bootstrap),
                           settings.topic_prefix + COUNTERS, timeout=args.timeout)
    # "now" for these figures is the newest event counted, not the wall clock: a simulated
    # July has nothing in today's month, and its future has not happened yet
    newest = max((s.as_of for s in snaps.values() if s.as_of), default="")
    event_now = datetime.fromisoformat(newest).astimezone(LOCAL_TZ) if newest else None
    today = datetime.now(LOCAL_TZ).date()
    default_end = event_now.date() if event_now is not None else today
    end: date = args.end or default_end
    start: date = args.start or end.replace(day=1)
    if end < start:
        raise MotcuaError(f"--to {end} is before --from {start}")
    range_note = None
    if args.end is None and default_end != today:
        range_note = (f"no --to: the range ends on the day of the newest event counted, "
                      f"not today ({today}): a simulation, or a feed that stopped")
    fig = scope_figures(snaps, args.scope, start, end)
    judged = end
    if event_now is not None and event_now.date() < end:
        # overdue after the newest event is a projection, not a fact: stocks (and so the
        # late rate) are judged at the end of the newest event's day
        judged = max(start, event_now.date())
        fig = replace(fig, stocks_at_end=scope_figures(snaps, args.scope, start,
                                                       judged).stocks_at_end)
    state = _freshness(args, settings, snaps)
    if args.json:
        say(json.dumps({**fig.as_dict(), **state,
                        "as_of": None if event_now is None else event_now.isoformat(),
                        "stocks_as_of": judged.isoformat(), "range_chosen": range_note},
                       ensure_ascii=False, indent=1))
        return 0
    if state["status"] != "live":
        say(f"{state['status'].upper().replace('_', ' ')}: {state['status_reason']}")
    say(render(fig))
    if event_now is not None:
        say(f"  newest event counted: {event_now:%Y-%m-%d %H:%M:%S}")
    if range_note:
        say(f"  ({range_note}; --from/--to for another range)")
    if judged != end:
        say(f"  (in progress, paused, overdue and the late rate at the end of {judged}, the "
            f"newest event's day, not of {end}: that lies beyond the newest event)")
    if not snaps:
        say("(no snapshots on the counters topic yet: is `motcua streams` running?)")
    return 0


def _freshness(args: argparse.Namespace, settings: Settings, snaps: dict[str, Any]
               ) -> dict[str, Any]:
    """Whether the figures are current: ``catching_up`` while the stream worker's stored
    positions are behind the source topics' high watermark and it publishes, ``stale``
    when it is behind and has published nothing for ``--stale-after`` seconds, else
    ``live``; ``unknown`` if its store or the topics cannot be read."""
    import time

    from consumers.sync.consumer import lag_of

    newest = max((s.published_at for s in snaps.values() if s.published_at), default="")
    age = (time.time() - datetime.fromisoformat(newest).timestamp()) if newest else None
    out: dict[str, Any] = {"status": "unknown", "status_reason": "", "behind": None,
                           "newest_snapshot_at": newest or None,
                           "snapshot_age_s": None if age is None else round(age, 1)}
    stored = _worker_positions(settings.streams_store_url)
    topics = [settings.topic_prefix + t for t in (DOSSIER_EVENTS, HOTLINE_EVENTS)]
    try:  # the high watermark of fetches: ListOffsets is too low on the embedded broker
        lag = lag_of(settings.kafka_config(settings.bootstrap), topics, stored or {},
                     timeout=args.timeout)
    except MotcuaError as exc:
        out["status_reason"] = f"the event topics' end is unknown ({exc})"
        return out
    out["behind"] = lag.events
    if stored is None and lag.events:
        out["status_reason"] = (f"no stream worker store at {settings.streams_store_url} to "
                                f"compare with the {lag.events:,} events on the topics")
        if not snaps:
            out["status"] = "stale"
        return out
    if lag.events == 0:
        out["status"] = "live"
    elif age is None or age > args.stale_after:
        out["status"] = "stale"
        out["status_reason"] = (f"the stream worker is {lag.events:,} events behind the "
                                "topics and has published no snapshot "
                                + ("yet" if age is None else f"for {age:.0f} s")
                                + ": is `motcua streams` running? (see its log)")
    else:
        out["status"] = "catching_up"
        out["status_reason"] = (f"the stream worker is still folding, {lag.events:,} events "
                                "behind the topics: these figures are partial")
    return out


def _worker_positions(url: str) -> dict[tuple[str, int], int] | None:
    """The stream worker's stored next offset per source partition, or None if it has no
    store here (never started) or the store cannot be read."""
    from sqlalchemy.exc import SQLAlchemyError

    from streams.store import stored_positions

    try:
        stored = stored_positions(url)
    except SQLAlchemyError:
        return None
    return None if stored is None else {tp: n for tp, (n, _) in stored.items()}


def render(fig: Figures) -> str:
    d: dict[str, Any] = fig.as_dict()

    def pct(v: object) -> str:
        return "–" if v is None else f"{v}%"

    lines = [
        f"{fig.scope}  {fig.start.isoformat()} … {fig.end.isoformat()} (local dates, inclusive)",
        f"  received (tiếp nhận)         {d['received']:>10,}",
        *(f"    {c:<26} {d[f'received.{c}']:>10,}" for c in CHANNELS),
        f"    {'full_online (toàn trình)':<26} {d['received.full_online']:>10,}",
        f"  online rate                  {pct(d['online_rate']):>10}",
        f"  handled (đã giải quyết)      {d['handled']:>10,}   early {d['handled.early']:,}"
        f" · on time {d['handled.on_time']:,} · late {d['handled.late']:,}",
        f"  on-time rate                 {pct(d['on_time_rate']):>10}   "
        f"(late rate {pct(d['late_rate'])})",
        f"  in progress at end           {d['in_progress']:>10,}   overdue "
        f"{d['overdue.in_progress']:,}",
        f"  paused at end                {d['paused']:>10,}   overdue {d['overdue.paused']:,}",
        f"  backlog carried over         {d['backlog_carried_over']:>10,}",
        f"  supplement requests          {d['supplement_requests']:>10,}",
        f"  withdrawn · refused          {d['withdrawn']:>10,} · {d['refused']:,}",
        f"  digitised components·results {d['digitised.components']:>10,} · "
        f"{d['digitised.results']:,}",
        f"  hotline 1022 calls           {d['hotline.calls']:>10,}   "
        + " · ".join(f"{c.value} {d[f'hotline.calls.{c.value}']:,}" for c in HotlineCategory),
    ]
    return "\n".join(lines)


def cmd_dead_letters(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    """One line pair (or JSON object) per bad message, whichever readers filed it."""
    from schemas.deadletter import filtered, group, read
    from streams.reader import read_to_end

    topic = settings.topic_prefix + DEAD_LETTERS
    bodies, unreadable = [], 0
    for rec in read_to_end(settings.kafka_config(settings.bootstrap), topic, args.timeout):
        body = read(rec.value)
        if body is None:
            unreadable += 1
        else:
            bodies.append(body)
    letters = group(bodies)
    shown = filtered(letters, since=args.since, reason=args.reason)
    for letter in shown:
        if args.json:
            say(json.dumps(letter.as_dict(), ensure_ascii=False))
        else:
            for line in letter.lines():
                say(line)
    if unreadable:  # on stderr: stdout stays JSON lines with --json
        print(f"motcua dead-letters: {unreadable} records on {topic} are not dead letters "
              "(skipped)", file=sys.stderr)
    if not args.json:
        readers = len({r for g in letters for r in g.readers})
        say(f"{len(shown)} of {len(letters)} bad messages shown ({len(bodies)} dead letters "
            f"from {readers} readers on {topic}; times in {LOCAL_TZ})")
    return 0


def _since(text: str) -> datetime:
    from schemas.deadletter import parse_since

    try:
        return parse_since(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], say: Say) -> None:
    p = sub.add_parser("streams", help="run a stream worker: fold events into live counters")
    p.add_argument("--no-verify", action="store_true",
                   help="skip signature checks (benchmarks only; schema checks stay on)")
    p.add_argument("--loglevel", default="WARNING", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="how much the worker logs to stderr (default WARNING)")
    add_metrics_port(p)
    p.set_defaults(func=lambda a, s: cmd_streams(a, s, say))

    p = sub.add_parser("counters", help="print the live figures for a scope and date range")
    p.add_argument("--scope", type=parse_scope, default=PROVINCE,
                   help="province (default), site:ID or commune:CODE")
    p.add_argument("--from", dest="start", type=parse_date, metavar="YYYY-MM-DD",
                   help="first local date, inclusive (default: the 1st of --to's month)")
    p.add_argument("--to", dest="end", type=parse_date, metavar="YYYY-MM-DD",
                   help="last local date, inclusive (default: the day of the "
                   "newest event counted, else today)")
    p.add_argument("--json", action="store_true", help="the figures as one JSON object")
    p.add_argument("--timeout", type=seconds, default=30.0, metavar="SECONDS",
                   help="seconds to wait for the counters topic to be read to its end "
                   "(default 30)")
    p.add_argument("--stale-after", type=seconds, default=60.0, metavar="SECONDS",
                   help="the figures are STALE when the stream worker is behind the topics "
                   "and has published nothing for this long (default 60)")
    p.set_defaults(func=lambda a, s: cmd_counters(a, s, say))

    p = sub.add_parser("dead-letters", help="list the bad messages the readers rejected: one "
                       "entry per message, with every reader that filed it")
    p.add_argument("--since", type=_since, metavar="WHEN",
                   help="only messages first filed at or after this local date (YYYY-MM-DD) "
                   "or local time (YYYY-MM-DD HH:MM[:SS], Asia/Ho_Chi_Minh)")
    p.add_argument("--reason", metavar="TEXT",
                   help="only messages whose reason contains TEXT (case-insensitive)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per message: source position, reasons, readers, "
                   "raw letter count, dossier id, origin, first/last filed time, original")
    p.add_argument("--timeout", type=seconds, default=30.0, metavar="SECONDS",
                   help="seconds to wait for the dead-letters topic to be read to its end "
                   "(default 30)")
    p.set_defaults(func=lambda a, s: cmd_dead_letters(a, s, say))

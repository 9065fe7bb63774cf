"""``motcua streams``, ``motcua counters`` and ``motcua dead-letters``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from infra.cli.args import parse_date
from infra.cli.bootstrap import provision, worker_config
from infra.settings import Settings
from schemas.counters import CHANNELS, PROVINCE
from schemas.enums import HotlineCategory
from schemas.errors import MotcuaError
from schemas.events import LOCAL_TZ
from schemas.figures import Figures
from schemas.nodes import SITES, UnknownNode, get_node
from schemas.topics import COUNTERS, DEAD_LETTERS

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
    return run(worker_config(settings, verify=not args.no_verify), loglevel=args.loglevel)


def cmd_counters(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    from schemas.snapshot import scope_figures
    from streams.reader import read_snapshots

    end: date = args.end or datetime.now(LOCAL_TZ).date()
    start: date = args.start or end.replace(day=1)
    if end < start:
        raise MotcuaError(f"--to {end} is before --from {start}")
    snaps = read_snapshots(settings.kafka_config(settings.bootstrap),
                           settings.topic_prefix + COUNTERS, timeout=args.timeout)
    fig = scope_figures(snaps, args.scope, start, end)
    if args.json:
        say(json.dumps(fig.as_dict(), ensure_ascii=False, indent=1))
    else:
        say(render(fig))
        if not snaps:
            say("(no snapshots on the counters topic yet: is `motcua streams` running?)")
    return 0


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
    from schemas.deadletter import parse
    from streams.reader import read_to_end

    topic = settings.topic_prefix + DEAD_LETTERS
    shown = 0
    for rec in read_to_end(settings.kafka_config(settings.bootstrap), topic, args.timeout):
        body = parse(rec.value)
        src = body["source"]
        if args.json:
            body.pop("original")
            say(json.dumps(body, ensure_ascii=False))
        else:
            say(f"{body['rejected_at']}  {src['topic']}[{src['partition']}]@{src['offset']}"
                f"  by {body['stage']}: {body['reason']}")
        shown += 1
    if not args.json:
        say(f"{shown} dead letters on {topic}")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], say: Say) -> None:
    p = sub.add_parser("streams", help="run a stream worker: fold events into live counters")
    p.add_argument("--no-verify", action="store_true",
                   help="skip signature checks (benchmarks only; schema checks stay on)")
    p.add_argument("--loglevel", default="WARNING")
    p.set_defaults(func=lambda a, s: cmd_streams(a, s, say))

    p = sub.add_parser("counters", help="print the live figures for a scope and date range")
    p.add_argument("--scope", type=parse_scope, default=PROVINCE,
                   help="province (default), site:ID or commune:CODE")
    p.add_argument("--from", dest="start", type=parse_date, help="first local date (default: "
                   "the 1st of --to's month)")
    p.add_argument("--to", dest="end", type=parse_date, help="last local date (default: today)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=lambda a, s: cmd_counters(a, s, say))

    p = sub.add_parser("dead-letters", help="list rejected messages with their reasons")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=lambda a, s: cmd_dead_letters(a, s, say))

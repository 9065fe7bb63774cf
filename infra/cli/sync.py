"""``motcua sync --node ID`` (run a node's sync consumer) and ``motcua sync status``."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from consumers.sync.consumer import SOURCE_TOPICS, SyncConsumer, lag_of
from infra.cli.bootstrap import open_replica, provision, replica_exists
from infra.process import Loop, StopSignals
from infra.settings import Settings
from schemas.errors import MotcuaError
from schemas.keys import load_registry
from schemas.nodes import UnknownNode, get_node

Say = Callable[[str], None]


def _node(text_: str) -> str:
    try:
        return get_node(text_).id
    except UnknownNode as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_sync(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    if args.action == "status":
        return cmd_status(args, settings, say)
    if not args.node or len(args.node) != 1:
        raise MotcuaError("sync needs exactly one --node ID (a site or a commune's code; "
                          "`motcua nodes` lists them)")
    node = args.node[0]
    registry = load_registry(settings.keys_path)  # a missing keystore: say so before anything
    provision(settings, settings.bootstrap, lambda _line: None)
    # logging from here on: a broker that is down at start is one line above, not a log
    logging.basicConfig(level=args.loglevel,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python warns about its own slow event-loop turns: noise on a busy 2-core machine
    logging.getLogger("kafka").setLevel(max(logging.ERROR, logging.getLogger().level))
    replica = open_replica(settings, node, args.db)
    consumer = SyncConsumer(replica, settings.kafka_config(settings.bootstrap), registry,
                            prefix=settings.topic_prefix, max_records=settings.sync_batch)
    what = "every dossier and call" if replica.is_site else "the dossiers it received, " \
        "handles or returns"
    say(f"sync {node}: replica {replica.engine.url.render_as_string(hide_password=True)} "
        f"keeps {what}")
    with StopSignals() as signals:
        loop = Loop(consumer.run, f"sync-{node}")
        name = signals.wait(lambda: say(_line(node, consumer)), every=30.0,
                            watch=lambda: None if loop.alive()
                            else "error: the sync consumer stopped")
        loop.close(30)
    say(f"{name}; {_line(node, consumer)}")
    return 1 if name.startswith("error:") else 0


def _line(node: str, consumer: SyncConsumer) -> str:
    a = consumer.applied
    line = (f"sync {node}: {a.stored:,} events stored, {a.duplicates:,} duplicates, "
            f"{consumer.dead:,} rejected, {a.dossiers:,} dossier rows written")
    return line + (f"; last error: {consumer.last_error}" if consumer.last_error else "")


def node_status(settings: Settings, node: str, db: str | None = None,
                timeout: float = 15.0) -> dict[str, Any]:
    """What ``sync status`` shows for one node."""
    if not replica_exists(settings, node, db):
        return {"node": node, "replica": "none yet (start `motcua sync --node "
                f"{node}` or `motcua up`)"}
    replica = open_replica(settings, node, db, create=False)  # status writes nothing
    try:
        held = replica.status()
        positions = replica.positions()
        gaps = replica.gaps()
    except SQLAlchemyError as exc:
        raise MotcuaError(f"{node}'s replica: {str(exc).splitlines()[0]}") from None
    finally:
        replica.engine.dispose()
    lag = lag_of(settings.kafka_config(settings.bootstrap),
                 [settings.topic_prefix + t for t in SOURCE_TOPICS], positions, timeout)

    def iso(v: object) -> str | None:
        return v.isoformat() if isinstance(v, datetime) else None

    seen = held["seen_at"]
    return {
        "node": node, "replica": replica.engine.url.render_as_string(hide_password=True),
        "events_behind": lag.events, "seconds_behind": round(lag.seconds(), 1),
        "gaps": {o: [list(r) for r in ranges] for o, ranges in gaps.items()},
        "dossiers": held["dossiers"], "calls": held["calls"], "events": held["stored"],
        "refused": held["refused"], "dead_letters": held["dead_letters"],
        "last_applied_at": iso(held["applied_at"]), "last_seen_at": iso(seen),
        "seconds_since_seen": (round((datetime.now(UTC) - seen).total_seconds(), 1)
                               if isinstance(seen, datetime) else None),
        "last_error": held["last_error"], "last_error_at": iso(held["last_error_at"]),
        "positions_beyond_log_end": lag.beyond,
    }


def cmd_status(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    nodes = args.node or [get_node(n).id for n in settings.sync_node_ids]
    rows = []
    for node in nodes:
        try:
            rows.append(node_status(settings, node, args.db, args.timeout))
        except MotcuaError as exc:  # one node's replica unreadable: say so, go on
            rows.append({"node": node, "replica": str(exc)})
    if args.json:
        say(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    say(f"{'node':<15}{'behind':>8}{'seconds':>9}{'dossiers':>10}{'calls':>7}{'rejected':>9}"
        "  gaps · last error")
    for r in rows:
        if "events_behind" not in r:
            say(f"{r['node']:<15}  {r['replica']}")
            continue
        gaps = "; ".join(f"{o}: " + ", ".join(f"{a}" if a == b else f"{a}-{b}"
                                              for a, b in ranges)
                         for o, ranges in r["gaps"].items()) or "no gaps"
        stale = r["seconds_since_seen"]
        alive = "" if stale is not None and stale < 30 else " · consumer not seen for " + (
            "ever" if stale is None else f"{stale:.0f} s")
        error = f" · {r['last_error_at']} {r['last_error']}" if r["last_error"] else ""
        if r["positions_beyond_log_end"]:
            error += (" · positions past the log end on "
                      f"{', '.join(r['positions_beyond_log_end'])} (another log? a restart of "
                      "`motcua sync` reads them again)")
        say(f"{r['node']:<15}{r['events_behind']:>8,}{r['seconds_behind']:>9.1f}"
            f"{r['dossiers']:>10,}{r['calls']:>7,}{r['dead_letters']:>9,}  {gaps}{alive}"
            f"{error}")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], say: Say) -> None:
    p = sub.add_parser("sync", help="run a node's sync consumer, or show every replica's lag "
                       "(`sync status`)")
    p.add_argument("action", nargs="?", choices=["run", "status"], default="run")
    p.add_argument("--node", type=_node, action="append",
                   help="a site or a commune code (status: repeat, default MOTCUA_SYNC_NODES)")
    p.add_argument("--db", help="the replica's database URL ({node} is filled in); default "
                   "MOTCUA_SYNC_DB_URL, else var/replicas/<node>.db")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.add_argument("--timeout", type=float, default=15.0,
                   help="status: deadline to read the log end (s)")
    p.add_argument("--loglevel", default="WARNING", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=lambda a, s: cmd_sync(a, s, say))

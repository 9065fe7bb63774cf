"""``motcua sync --node ID`` (run a node's sync consumer) and ``motcua sync status``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from consumers.sync.consumer import SOURCE_TOPICS, SyncConsumer, lag_of
from infra import logs
from infra.cli.args import database_url, seconds
from infra.cli.bootstrap import open_replica, provision, replica_exists, replica_location
from infra.cli.ops import add_metrics_port, start_metrics
from infra.db import sqlite_file
from infra.process import Loop, StopSignals
from infra.settings import Settings
from schemas.deadletter import local_text, one_line
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
    metrics = start_metrics(settings, f"sync-{node}", args.metrics_port)
    logs.setup(args.loglevel, settings.log_format, metrics.kafka_trouble)
    replica = open_replica(settings, node, args.db)
    consumer = SyncConsumer(replica, settings.kafka_config(settings.bootstrap), registry,
                            prefix=settings.topic_prefix, max_records=settings.sync_batch,
                            metrics=metrics)
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
        where = sqlite_file(replica_location(settings, node, db)[0])  # only SQLite is absent
        return {"node": node, "missing": str(where),
                "replica": f"none yet at {where} (start `motcua sync --node {node}` or "
                "`motcua up`)"}
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
        # an error the consumer has got past is no health problem: kept apart, full text
        **({"last_error": held["last_error"], "last_error_at": iso(held["last_error_at"])}
           if held["error_current"] else
           {"last_error": None, "last_error_at": None, "past_error": held["last_error"],
            "past_error_at": iso(held["last_error_at"])}),
        "positions_beyond_log_end": lag.beyond,
    }


def _nowhere(settings: Settings, rows: list[dict[str, Any]], db: str | None) -> str:
    """The error when not one replica is there: where they were looked for, and why there."""
    folders = sorted({str(Path(r["missing"]).parent) for r in rows})
    if db is not None:
        why = "--db chooses where"
    elif settings.sync_db_url is not None:
        why = "MOTCUA_SYNC_DB_URL chooses where"
    else:
        why = f"MOTCUA_DATA_DIR={settings.data_dir} chooses the folder"
    return (f"no replica of {', '.join(r['node'] for r in rows)} in {' or '.join(folders)}; "
            f"{why}: point it at the data of `motcua up`, or start `motcua sync --node ID`")


ERROR_WIDTH = 72  # the row stays readable in a terminal; --json has the whole text


def cmd_status(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    nodes = args.node or [get_node(n).id for n in settings.sync_node_ids]
    rows = []
    for node in nodes:
        try:
            rows.append(node_status(settings, node, args.db, args.timeout))
        except MotcuaError as exc:  # one node's replica unreadable: say so, go on
            rows.append({"node": node, "replica": str(exc)})
    if rows and all("missing" in r for r in rows):  # a wrong folder, most likely: say where
        raise MotcuaError(_nowhere(settings, rows, args.db))
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
        error = (f" · last error {local_text(datetime.fromisoformat(r['last_error_at']))} "
                 f"{one_line(r['last_error'], ERROR_WIDTH)}" if r["last_error"] else "")
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
                       "(`sync status`)", usage="motcua sync --node ID [options]\n"
                       "       motcua sync status [--node ID ...] [--json] [options]",
                       description="`motcua sync --node ID` keeps ID's replica up to date "
                       "(runs until Ctrl-C); `motcua sync status` shows how far behind each "
                       "replica is.")
    # "run" stays accepted (`motcua sync run --node ID`); the usage shows the two forms
    p.add_argument("action", nargs="?", choices=["run", "status"], default="run",
                   metavar="status", help="show each replica's lag instead of running a "
                   "node's sync consumer")
    p.add_argument("--node", type=_node, action="append", metavar="ID",
                   help="a site or a commune code (status: repeatable; default "
                   "MOTCUA_SYNC_NODES)")
    p.add_argument("--db", type=database_url, metavar="URL",
                   help="the replica's database URL ({node} is filled in); default "
                   "MOTCUA_SYNC_DB_URL, else $MOTCUA_DATA_DIR/replicas/<node>.db")
    p.add_argument("--json", action="store_true", help="status: print the rows as JSON")
    p.add_argument("--timeout", type=seconds, default=15.0, metavar="SECONDS",
                   help="status: seconds to wait for the log end of the topics (default 15)")
    p.add_argument("--loglevel", default="WARNING", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="how much the consumer logs to stderr (default WARNING)")
    add_metrics_port(p)
    p.set_defaults(func=lambda a, s: cmd_sync(a, s, say))

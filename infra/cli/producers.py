"""``motcua simulate`` and ``motcua relay``: the producer side of the pipeline."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import date

from sqlalchemy import Engine

from infra import logs
from infra.cli.args import database_url, int_between, parse_date, positive, seconds
from infra.cli.bootstrap import keyring, provision, start_relay
from infra.cli.ops import add_metrics_port, start_metrics
from infra.process import StopSignals
from infra.settings import Settings
from producers import store
from producers.migrate import open_store
from producers.service import DossierService
from producers.sim.plan import plan
from producers.sim.simulator import SimulationFinished, Simulator
from schemas.errors import MotcuaError
from schemas.events import LOCAL_TZ
from schemas.nodes import get_node

Say = Callable[[str], None]


def drain(engine: Engine, timeout: float) -> int:
    """Wait until the outbox is empty or ``timeout`` passes; returns what is left."""
    deadline = time.monotonic() + timeout
    left = store.count_unpublished(engine)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = store.count_unpublished(engine)
    return left


def parse_speed(text: str) -> float | None:
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use a number (60 = an office hour a "
                                         "minute) or 'max'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("speed must be positive")
    return value


def note(text: str) -> None:
    """Progress for a person, on stderr: stdout carries the JSON summary alone."""
    print(text, file=sys.stderr, flush=True)


def cmd_simulate(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    plan(args.start, args.end, scale=args.scale, seed=args.seed)  # bad arguments fail here
    engine = open_store(args.db or settings.store_url)
    service = DossierService(engine, keyring(settings, note))
    stop = threading.Event()
    sim = Simulator(service, args.start, args.end, scale=args.scale, seed=args.seed,
                    speed=args.speed, stop=stop)
    try:  # another simulation in the store fails here, before anything starts
        resumed = sim.resume_point()
    except SimulationFinished as exc:
        note(str(exc))
        return 0
    if resumed is not None:
        note(f"resuming this store's simulation where it stopped, at "
             f"{resumed.astimezone(LOCAL_TZ):%Y-%m-%d %H:%M:%S}")
    relay = None
    if not args.no_relay:
        bootstrap = settings.bootstrap
        provision(settings, bootstrap, lambda _line: None)
        relay, relay_loop = start_relay(settings, engine, bootstrap)
    failure: list[BaseException] = []
    runner = threading.Thread(target=_run_capturing, args=(sim, failure), name="simulator")
    runner.start()
    try:
        while runner.is_alive():
            runner.join(0.5)
    except KeyboardInterrupt:
        note("interrupted: stopping the simulator, then publishing what it wrote")
        stop.set()
        runner.join()
    if failure and relay is not None:
        relay_loop.stop.set()
    if failure:
        raise failure[0]
    summary = sim.summary.as_dict()
    if relay is not None:
        left = drain(engine, args.drain_timeout)
        relay_loop.close(10)
        summary["events_published"] = relay.stats.published
        summary["events_unpublished"] = left
        if left:
            summary["note"] = (f"{left} events are still in the outbox (Kafka unreachable?); "
                               "`motcua relay --all` publishes them, nothing is lost")
    say(json.dumps(summary, ensure_ascii=False, indent=1))
    return 0 if not summary["refused_operations"] else 1


def _run_capturing(sim: Simulator, failure: list[BaseException]) -> None:
    try:
        sim.run()
    except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
        failure.append(exc)


def cmd_relay(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    if not args.all and not args.node:
        raise MotcuaError("say which nodes to relay: --node ID (repeatable) or --all")
    nodes = None if args.all else [get_node(n).id for n in args.node]
    # the relay outlives a broker outage by retrying; a refused password or certificate
    # never heals, so it is said now rather than retried for ever (a broker that is down
    # or not answering gives no reason here: the relay starts and waits for it)
    from infra.kafka_probe import why_unreachable

    refused = why_unreachable(settings.kafka_config(settings.bootstrap),
                              settings.kafka_bootstrap_timeout_ms / 1000)
    if refused is not None:
        raise MotcuaError(refused)
    engine = open_store(args.db or settings.store_url)
    metrics = start_metrics(settings, "relay", args.metrics_port)
    logs.setup("WARNING", settings.log_format, metrics.kafka_trouble)
    extra: dict[str, float | str] = {"lease_seconds": args.lease_seconds,
                                     "batch_size": args.batch_size}
    if args.holder:
        extra["holder"] = args.holder
    with StopSignals() as signals:
        relay, loop = start_relay(settings, engine, settings.bootstrap, nodes,
                                  metrics, **extra)
        say(f"relay {relay.holder}: publishing "
            f"{'every node' if nodes is None else ', '.join(nodes)} from "
            f"{engine.url.render_as_string(hide_password=True)}")
        signals.wait()
    loop.close(30)
    say(f"relay stopped: {relay.stats.published} events published this run")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                say: Say) -> None:
    p = sub.add_parser("simulate", help="drive all 106 nodes with the calibrated workload")
    p.add_argument("--from", dest="start", type=parse_date, default=date(2025, 7, 1),
                   metavar="YYYY-MM-DD", help="first simulated local date (default 2025-07-01)")
    p.add_argument("--to", dest="end", type=parse_date, default=date(2025, 7, 30),
                   metavar="YYYY-MM-DD",
                   help="last simulated local date, inclusive (default 2025-07-30)")
    p.add_argument("--speed", type=parse_speed, default=None, metavar="N|max",
                   help="N x real time (60: an office hour a minute) or max (default: max)")
    p.add_argument("--seed", type=int, default=1, metavar="N",
                   help="random seed: the same seed, dates and scale give the same dossiers "
                   "(default 1)")
    p.add_argument("--scale", type=positive, default=1.0, metavar="FACTOR",
                   help="volume, above 0 (1 = July 2025's dossiers and calls; default 1)")
    p.add_argument("--db", type=database_url, metavar="URL",
                   help="node store URL (default MOTCUA_DB_URL, else "
                   "$MOTCUA_DATA_DIR/nodes.db)")
    p.add_argument("--no-relay", action="store_true", help="only write the node stores")
    p.add_argument("--drain-timeout", type=seconds, default=120.0, metavar="SECONDS",
                   help="seconds to wait at the end for the relay to publish everything "
                   "(default 120)")
    p.set_defaults(func=lambda a, s: cmd_simulate(a, s, say))

    p = sub.add_parser("relay", help="publish nodes' outboxes to Kafka")
    p.add_argument("--node", action="append", metavar="ID",
                   help="a node whose outbox to publish (repeatable)")
    p.add_argument("--all", action="store_true", help="every node in the store")
    p.add_argument("--db", type=database_url, metavar="URL",
                   help="node store URL (default MOTCUA_DB_URL, else "
                   "$MOTCUA_DATA_DIR/nodes.db)")
    p.add_argument("--lease-seconds", type=seconds, default=60.0, metavar="SECONDS",
                   help="seconds another relay waits after this one died before it takes "
                   "over (default 60)")
    p.add_argument("--holder", metavar="NAME", help="lease holder name (default host:pid)")
    p.add_argument("--batch-size", type=int_between(1, 100_000), default=2000, metavar="N",
                   help="events per send round, 1-100000 (default 2000)")
    add_metrics_port(p)
    p.set_defaults(func=lambda a, s: cmd_relay(a, s, say))

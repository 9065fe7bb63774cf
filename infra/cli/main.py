"""The ``motcua`` command. Every user mistake ends in one line on stderr and exit status 2
(bad data found by a check: 1); a traceback means a bug in motcua."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, SQLAlchemyError

from infra.broker import EmbeddedBroker
from infra.cli import args as args_
from infra.cli import audit as audit_cli
from infra.cli import display as display_cli
from infra.cli import kafka as kafka_cli
from infra.cli import keys as keys_cli
from infra.cli import ops as ops_cli
from infra.cli import producers as producers_cli
from infra.cli import streams as streams_cli
from infra.cli import sync as sync_cli
from infra.cli.bootstrap import provision
from infra.cli.up import UpOptions, run_up
from infra.db import sqlite_file
from infra.process import StopSignals
from infra.settings import Settings, hide_password, load_settings
from infra.topics import admin_client, describe, kafka_reason, unreachable
from schemas.check import check_lines, seq_gaps
from schemas.errors import MotcuaError
from schemas.jsonschema import JSON_DIR, export
from schemas.keys import REGISTRY_FILE, init_keystore, load_registry
from schemas.nodes import all_nodes, node_ids
from schemas.topics import topic_specs


def say(text: str) -> None:
    print(text, flush=True)


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    port = args.port if args.port is not None else settings.broker_port
    with StopSignals() as signals, EmbeddedBroker(
            port, binary=settings.tansu_bin,
            log_path=settings.data_dir / "log" / "broker.log") as broker:
        say(f"bootstrap={broker.bootstrap}")
        signals.wait()
    return 0


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    bootstrap = settings.bootstrap
    if args.action == "create":
        provision(settings, bootstrap, say)
        return 0
    admin = admin_client(settings.kafka_config(bootstrap), settings.kafka_bootstrap_timeout_ms)
    try:
        rows = describe(admin, topic_specs(settings.topic_prefix))
    finally:
        admin.close()
    say(f"{'topic':<24}{'status':<9}{'partitions':>11}  key / purpose")
    for row in rows:
        parts = "-" if row.partitions is None else str(row.partitions)
        say(f"{row.name:<24}{row.status:<9}{parts:>11}  {row.spec.key}: {row.spec.purpose}"
            + (f"  [{row.note}]" if row.note else ""))
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    directory = args.dir or settings.keys_path
    if args.action == "rotate":
        if args.node is None:
            raise MotcuaError("keys rotate needs --node ID (the node whose key to replace)")
        return keys_cli.rotate(args.node, directory, args.db or settings.store_url, say)
    if args.node is not None or args.db is not None:
        raise MotcuaError("--node and --db go with `keys rotate`; `keys init` makes every "
                          "node's missing key pair")
    created, kept = init_keystore(directory, node_ids())
    say(f"{created} key pairs created, {kept} kept; registry: {directory / REGISTRY_FILE}")
    return 0


def cmd_schemas(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "export":
        changed = export(JSON_DIR)
        say(f"{len(changed)} schema file(s) rewritten in {JSON_DIR}" if changed
            else f"{JSON_DIR} is up to date")
        return 0
    if args.file is None:
        raise MotcuaError("schemas check needs a FILE (JSON lines, one event per line)")
    if args.keys is not None:  # asked for: a missing registry is an error, not a downgrade
        registry = load_registry(args.keys)
    elif (settings.keys_path / REGISTRY_FILE).exists():
        registry = load_registry(settings.keys_path)
    else:
        registry = None
        say(f"note: no key registry at {settings.keys_path} (give --keys DIR); checking "
            "hashes and chains, NOT signatures")
    try:
        handle = sys.stdin.buffer if str(args.file) == "-" else args.file.open("rb")
    except OSError as exc:
        raise MotcuaError(f"cannot read {args.file.absolute()}: {exc.strerror}") from None
    good = bad = dup = 0
    seqs: dict[str, set[int]] = {}
    with handle:
        for result in check_lines(handle, registry):
            if result.error:
                bad += 1
                say(f"line {result.line_no}: {result.error}")
            else:
                good += 1
                dup += result.duplicate
                assert result.event is not None
                seqs.setdefault(result.event.origin, set()).add(result.event.origin_seq)
    gaps = seq_gaps(seqs)
    say(f"{good + bad} events: {good} valid ({dup} duplicates), {bad} invalid")
    for origin, first, last in gaps:
        say(f"note: origin {origin} has no seq {first}" + (f"-{last}" if last > first else "")
            + " in this file (a gap, if the file should hold that origin's whole chain)")
    return 1 if bad else 0


def cmd_nodes(args: argparse.Namespace, settings: Settings) -> int:
    nodes = all_nodes()
    if args.json:
        say(json.dumps([vars(n) for n in nodes], ensure_ascii=False, indent=1))
    else:
        for node in nodes:
            say(f"{node.id:<15}{node.kind:<8}{node.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # a Parser: every subcommand's mistakes are one line too (argparse passes the class on)
    parser: argparse.ArgumentParser = args_.Parser(prog="motcua", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="run the whole system on this machine (embedded broker)")
    p.add_argument("--broker", choices=["tansu", "kafka"], default="tansu",
                   help="tansu: the embedded broker, memory storage (default); kafka: a "
                        "local Apache Kafka cluster, log on disk (motcua kafka install first)")
    p.add_argument("--port", type=args_.tcp_port,
                   help="broker port, 1-65535 (default 9092 for tansu, 19092 for kafka)")
    p.add_argument("--no-simulate", action="store_true", help="run without the simulator")
    p.add_argument("--speed", type=producers_cli.parse_speed, default=60.0,
                   help="simulator speed: N x real time (default 60) or max")
    p.add_argument("--scale", type=args_.positive, default=1.0,
                   help="simulator volume, above 0 (1 = July 2025's dossiers and calls)")
    p.set_defaults(func=lambda a, s: run_up(s, say, UpOptions(
        port=a.port, broker=a.broker, simulate=not a.no_simulate, speed=a.speed, scale=a.scale)))

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (tansu)")
    p.add_argument("--port", type=args_.tcp_port,
                   help="port on 127.0.0.1, 1-65535 (default MOTCUA_BROKER_PORT, 9092)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="create or list the registry topics")
    p.add_argument("action", choices=["create", "list"],
                   help="create: make the missing topics; list: each topic's state")
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("keys", help="manage the nodes' signing keys")
    p.add_argument("action", choices=["init", "rotate"],
                   help="init: make every node's missing key pair; rotate: replace --node's")
    p.add_argument("--dir", type=args_.absolute_path,
                   help="key directory (default MOTCUA_KEYS_DIR, else $MOTCUA_DATA_DIR/keys)")
    p.add_argument("--node", help="rotate: the node whose key to replace")
    p.add_argument("--db", type=args_.database_url, metavar="URL",
                   help="rotate: the node store, for the node's next seq "
                        "(default MOTCUA_DB_URL, else $MOTCUA_DATA_DIR/nodes.db)")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("schemas", help="check a JSON-lines file of events, or export schemas")
    p.add_argument("action", choices=["check", "export"],
                   help="check: validate FILE's events; export: rewrite the JSON Schemas")
    p.add_argument("file", nargs="?", type=Path, help="JSON-lines file for check ('-': stdin)")
    p.add_argument("--keys", type=args_.absolute_path,
                   help="key directory or registry.json for signatures (default "
                   "$MOTCUA_DATA_DIR/keys, if there)")
    p.set_defaults(func=cmd_schemas)

    kafka_cli.add_parsers(sub, say)
    producers_cli.add_parsers(sub, say)
    streams_cli.add_parsers(sub, say)
    sync_cli.add_parsers(sub, say)
    display_cli.add_parsers(sub, say)
    audit_cli.add_parsers(sub, say)
    ops_cli.add_parsers(sub, say)

    p = sub.add_parser("nodes", help="list the 104 commune centres and the 2 provincial sites")
    p.add_argument("--json", action="store_true", help="the list as JSON")
    p.set_defaults(func=cmd_nodes)
    return parser


# what a client raises when it never got a connection: a refused password or an untrusted
# certificate looks like this too (infra/kafka_probe.py tells them apart)
UNREACHABLE = (KafkaTimeoutError, KafkaConnectionError)


def _kafka_problem(settings: Settings | None, exc: KafkaError) -> str:
    if settings is None or not isinstance(exc, UNREACHABLE):
        return f"Kafka error: {kafka_reason(exc)}"
    try:
        return "error: " + unreachable(settings.kafka_config(settings.bootstrap), exc,
                                       settings.kafka_bootstrap_timeout_ms)
    except MotcuaError as problem:
        return f"error: {problem}"


# commands that write under MOTCUA_DATA_DIR (stores, keys, logs, the archive): they check
# it can be written before they start; the others only read, and may run on a copy
WRITERS = {"up", "broker", "kafka", "keys", "simulate", "relay", "streams", "archive"}


def _db_urls(settings: Settings, args: argparse.Namespace) -> dict[str, str]:
    """The database URLs this command may have used, by the option or variable that set it."""
    given = getattr(args, "db", None)
    urls = {"--db": given} if given else {}
    return urls | {f"MOTCUA_{f.upper()}": getattr(settings, f) for f in
                   ("db_url", "streams_db_url", "sync_db_url") if getattr(settings, f)}


def _db_problem(exc: SQLAlchemyError, settings: Settings | None, args: argparse.Namespace
                ) -> str:
    """One line for a database motcua could not open or reach, naming where it is set."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    if settings is None:
        return f"database: {reason}"
    urls = _db_urls(settings, args)
    named = [n for n, u in urls.items() if (_host_port(u) or "\0") in reason] or list(urls)
    if "unable to open database file" in reason or not named:
        return (f"database: {reason} (SQLite files are kept under MOTCUA_DATA_DIR="
                f"{settings.data_dir}" + (f"; check {' / '.join(named)}" if named else "")
                + ")")
    return (f"database: {reason}: is the database server up and the URL right? check "
            + " / ".join(f"{n}={hide_password(str(urls[n]))}" for n in named))


def _host_port(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    return f'"{parsed.host}", port {parsed.port or 5432}' if parsed.host else None


def _os_problem(exc: OSError, settings: Settings | None, args: argparse.Namespace) -> str:
    """One line for a file or folder motcua could not make or use, naming what chose it."""
    if not exc.filename:
        return str(exc)
    where = Path(exc.filename).absolute()
    line = f"{where}: {exc.strerror or exc}"
    chosen = [f"--{k.replace('_', '-')}" for k, v in vars(args).items() if k != "db"
              and isinstance(v, str | Path) and str(where) in str(Path(str(v)).absolute())]
    if settings is not None:
        chosen += [n for n, u in _db_urls(settings, args).items()
                   if str(where) in str(sqlite_file(u) or "")]
        if not chosen and where.is_relative_to(settings.data_dir):
            chosen.append(f"MOTCUA_DATA_DIR={settings.data_dir}")
    return line + (f" (from {' / '.join(chosen)}: give a folder motcua can make and write "
                   "in)" if chosen else "")


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM and SIGHUP unwind like Ctrl-C, so every started child (the broker) is stopped
    # wherever the command is; StopSignals takes them over where a command waits for them.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    settings: Settings | None = None
    try:
        settings = load_settings()
        if args.command in WRITERS or (args.command == "sync" and args.action == "run"):
            settings.check_data_dir_writable()
        return int(args.func(args, settings))
    except MotcuaError as exc:
        print(f"motcua {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        print(f"motcua {args.command}: {_kafka_problem(settings, exc)}", file=sys.stderr)
        return 2
    # a database that is down or a file that cannot be made: the user's to fix, so one
    # line (other database errors stay tracebacks: they are motcua's bugs)
    except (OperationalError, ArgumentError, NoSuchModuleError) as exc:
        print(f"motcua {args.command}: error: {_db_problem(exc, settings, args)}",
              file=sys.stderr)
        return 2
    except BrokenPipeError:  # `motcua nodes | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError,
            FileNotFoundError) as exc:
        print(f"motcua {args.command}: error: {_os_problem(exc, settings, args)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

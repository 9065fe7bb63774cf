"""``motcua archive`` (the audit archive's consumer) and, as they are built, the audit
commands (issue 13)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from consumers.audit.archive import ArchiveConsumer, Signer, checkpoint_name
from consumers.audit.store import Archive
from infra.cli.args import parse_date
from infra.cli.bootstrap import provision
from infra.cli.streams import parse_scope
from infra.process import Loop, StopSignals
from infra.settings import Settings
from schemas.counters import PROVINCE
from schemas.errors import MotcuaError
from schemas.keys import Keyring, init_keystore, load_registry
from schemas.nodes import SITES
from schemas.topics import COUNTERS

Say = Callable[[str], None]


def archive_dir(settings: Settings, given: str | None) -> Path:
    return Path(given) if given else settings.data_dir / "archive"


def cmd_archive(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    registry = load_registry(settings.keys_path)  # a missing keystore: say so before anything
    if args.checkpoint_every <= 0:
        raise MotcuaError(f"--checkpoint-every {args.checkpoint_every:g}: give a number of "
                          "seconds above 0")
    provision(settings, settings.bootstrap, lambda _line: None)
    logging.basicConfig(level=args.loglevel,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(logging.ERROR, logging.getLogger().level))
    root = archive_dir(settings, args.dir).resolve()
    archive = Archive.open(root)
    try:
        for line in archive.repair():  # open() repaired already; this only lists leftovers
            say(f"archive: {line}")
        held, refused = archive.counts()
        say(f"archive: {root} holds {held:,} events ({refused:,} records refused)")
        signer = None
        if args.site:
            key = audit_keys(settings, [args.site])(args.site)
            signer = Signer(checkpoint_name(args.site), key, args.checkpoint_every)
            say(f"archive: signs a checkpoint every {args.checkpoint_every:g} s as "
                f"{signer.name} (key in {settings.keys_path / 'audit'})")
        consumer = ArchiveConsumer(archive, settings.kafka_config(settings.bootstrap),
                                   registry, prefix=settings.topic_prefix, signer=signer)
        with StopSignals() as signals:
            loop = Loop(consumer.run, "archive")
            name = signals.wait(lambda: say(_line(consumer)), every=30.0,
                                watch=lambda: None if loop.alive()
                                else "error: the archive consumer stopped")
            loop.close(30)
        say(f"{name}; {_line(consumer)}")
        return 1 if name.startswith("error:") else 0
    finally:
        archive.close()


def audit_keys(settings: Settings, sites: list[str]) -> Keyring:
    """The sites' checkpoint keys (``<keys>/audit``, created if missing; their public keys
    in that folder's registry.json)."""
    init_keystore(settings.keys_path / "audit", sites)
    return Keyring(settings.keys_path / "audit")


def _line(consumer: ArchiveConsumer) -> str:
    line = (f"archive: {consumer.archived:,} events archived, {consumer.refused:,} refused, "
            f"{consumer.checkpoints:,} checkpoints signed")
    return line + (f"; last error: {consumer.last_error}" if consumer.last_error else "")


def _open_for_reading(settings: Settings, given: str | None) -> Archive:
    return Archive.reader(archive_dir(settings, given).resolve())


def cmd_audit(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    if args.action == "replay":
        return cmd_replay(args, settings, say)
    from consumers.audit.verify import verify_archive

    registry = load_registry(settings.keys_path)
    archive = _open_for_reading(settings, args.dir)
    try:
        started = time.perf_counter()
        audit_registry = settings.keys_path / "audit" / "registry.json"
        audit_keys = load_registry(audit_registry) if audit_registry.exists() else None
        report = verify_archive(archive, registry, args.signatures, audit_keys=audit_keys)
        took = time.perf_counter() - started
    finally:
        archive.close()
    problems = report.problems or []
    if args.json:
        say(json.dumps({"archive": str(archive.root), "events": report.events,
                        "origins": report.origins, "signatures": args.signatures,
                        "signatures_checked": report.signatures_checked,
                        "checkpoints_checked": report.checkpoints,
                        "problems": [{"origin": p.origin, "seq": p.seq, "reason": p.reason}
                                     for p in problems]}, ensure_ascii=False, indent=2))
    else:
        for p in problems:
            say(f"PROBLEM {p}")
        say(f"audit verify: {report.events:,} events of {report.origins} origins in "
            f"{archive.root}; signatures: {args.signatures} ({report.signatures_checked:,} "
            f"checked); {report.checkpoints} signed checkpoints checked; "
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''}; "
            f"{took:.1f} s")
    return 1 if problems else 0


def cmd_replay(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    from consumers.audit.replay import differences, replay
    from schemas.snapshot import scope_figures
    from streams.reader import read_snapshots

    _check_period(args, "audit replay")
    archive = _open_for_reading(settings, args.dir)
    try:
        started = time.perf_counter()
        result = replay(archive)
        took = time.perf_counter() - started
    finally:
        archive.close()
    replayed = result.figures(args.scope, args.start, args.end).as_dict()
    live: dict[str, object] | None = None
    if not args.no_live:
        snaps = read_snapshots(settings.kafka_config(settings.bootstrap),
                               settings.topic_prefix + COUNTERS, timeout=args.timeout)
        live = scope_figures(snaps, args.scope, args.start, args.end).as_dict()
    differ = differences(replayed, live) if live is not None else []
    if args.json:
        say(json.dumps({"source": "archive", "archive": str(archive.root),
                        "counter_rules": result.rules, "events": result.events,
                        "replay": replayed, "live": live, "differences": differ},
                       ensure_ascii=False, indent=1))
    else:
        say(f"audit replay: {args.scope} {args.start} … {args.end} from {result.events:,} "
            f"archived events ({archive.root}), counter rules v{result.rules}, {took:.1f} s")
        say(f"  {'measure':<28} {'replay':>12} {'live':>12}")
        for key, value in replayed.items():
            if key in ("scope", "from", "to"):
                continue
            shown = "" if live is None else live.get(key)
            mark = "  ≠ DIFFERS" if key in differ else ""
            say(f"  {key:<28} {_cell(value):>12} {_cell(shown):>12}{mark}")
        if live is not None:
            say(f"{len(differ)} difference{'s' if len(differ) != 1 else ''} from the live "
                "figures (`motcua counters`)")
    return 1 if differ else 0


def cmd_report(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    from consumers.audit.replay import replay
    from consumers.audit.report import Meta, rows, write_csv, write_json, write_xlsx

    _check_period(args, "report")
    if args.format == "xlsx" and not args.out:
        raise MotcuaError("--format xlsx needs --out FILE (a spreadsheet is not for a "
                          "terminal)")
    out = Path(args.out).resolve() if args.out else None
    if out is not None and not out.parent.is_dir():
        raise MotcuaError(f"--out {out}: the folder {out.parent} does not exist")
    archive = _open_for_reading(settings, args.dir)
    try:
        result = replay(archive)
    finally:
        archive.close()
    table = rows(result, args.start, args.end, args.scope)
    meta = Meta(args.start, args.end, result.events, result.rules, str(archive.root), None)
    if args.format == "xlsx":
        assert out is not None
        write_xlsx(out, table, meta)
    else:
        data = write_csv(table, meta) if args.format == "csv" else write_json(table, meta)
        if out is None:
            say(data.decode("utf-8-sig"))
            return 0
        out.write_bytes(data)
    say(f"report: {len(table)} rows, {args.start} … {args.end}, from {result.events:,} "
        f"archived events, written to {out}")
    return 0


def _check_period(args: argparse.Namespace, command: str) -> None:
    if args.start is None or args.end is None:
        raise MotcuaError(f"{command} needs --from and --to (local dates, inclusive)")
    if args.end < args.start:
        raise MotcuaError(f"--to {args.end} is before --from {args.start}")


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], say: Say) -> None:
    r = sub.add_parser("report", help="the officials' report of a period (province, sites, "
                       "communes) from the audit archive")
    r.add_argument("--from", dest="start", type=parse_date, help="first local date")
    r.add_argument("--to", dest="end", type=parse_date, help="last local date (inclusive)")
    r.add_argument("--scope", type=parse_scope, default=None,
                   help="one scope only (province, site:ID, commune:CODE); default all")
    r.add_argument("--format", choices=["xlsx", "csv", "json"], default="xlsx")
    r.add_argument("--out", help="the file to write (csv and json print when absent)")
    r.add_argument("--dir", help="the archive's folder (default: $MOTCUA_DATA_DIR/archive)")
    r.set_defaults(func=lambda a_, s: cmd_report(a_, s, say))

    a = sub.add_parser("audit", help="check the audit archive (verify) and recompute "
                       "figures from it (replay)")
    a.add_argument("action", choices=["verify", "replay"],
                   help="verify: is the archive complete and untampered (every problem named "
                   "by origin and seq; exit 1 on any); replay: a period's figures from the "
                   "archived events, beside the live ones (exit 1 if they differ)")
    a.add_argument("--dir", help="the archive's folder (default: $MOTCUA_DATA_DIR/archive)")
    a.add_argument("--signatures", choices=["all", "heads"], default="all",
                   help="check every event's signature (all, on every core) or each "
                   "origin's last one (heads: enough once hashes and links hold; "
                   "docs/audit.md)")
    a.add_argument("--json", action="store_true", help="the report as JSON")
    a.add_argument("--scope", type=parse_scope, default=PROVINCE,
                   help="replay: province, site:ID or commune:CODE")
    a.add_argument("--from", dest="start", type=parse_date,
                   help="replay: first local date, YYYY-MM-DD")
    a.add_argument("--to", dest="end", type=parse_date,
                   help="replay: last local date, YYYY-MM-DD (inclusive)")
    a.add_argument("--no-live", action="store_true",
                   help="replay: do not read the live figures from Kafka")
    a.add_argument("--timeout", type=float, default=30.0,
                   help="replay: seconds to read the counters topic to its end")
    a.set_defaults(func=lambda a_, s: cmd_audit(a_, s, say))

    p = sub.add_parser("archive", help="keep the audit archive: every verified event, in "
                       "compressed append-only segments per origin and day")
    p.add_argument("--dir", help="the archive's folder (default: $MOTCUA_DATA_DIR/archive)")
    p.add_argument("--site", choices=list(SITES),
                   help="sign checkpoints of this archive as this provincial site")
    p.add_argument("--checkpoint-every", type=float, default=60.0,
                   help="seconds between two checkpoints (default 60; one also when the "
                   "local day ends)")
    p.add_argument("--loglevel", default="WARNING", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=lambda a, s: cmd_archive(a, s, say))

"""``motcua archive`` (the audit archive's consumer) and, as they are built, the audit
commands (issue 13)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from consumers.audit.archive import ArchiveConsumer, Signer
from consumers.audit.store import Archive
from consumers.audit.witness import checkpoint_name
from infra import logs
from infra.cli.args import parse_date, seconds
from infra.cli.bootstrap import provision
from infra.cli.ops import add_metrics_port, start_metrics
from infra.cli.streams import parse_scope
from infra.process import Loop, StopSignals
from infra.settings import Settings
from schemas.counters import PROVINCE
from schemas.errors import MotcuaError
from schemas.keys import Keyring, init_keystore, load_registry
from schemas.nodes import SITES
from schemas.topics import COUNTERS

Say = Callable[[str], None]


def archive_dir(settings: Settings, given: str | None, site: str | None = None) -> Path:
    """``--dir``, or the site's archive: ``archive`` for Phố Hiến (and an unsigned one),
    ``archive-<site>`` for another."""
    if given:
        return Path(given)
    if site is None or site == SITES[0]:
        return settings.data_dir / "archive"
    return settings.data_dir / f"archive-{site}"


def cmd_archive(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    registry = load_registry(settings.keys_path)  # a missing keystore: say so before anything
    if args.checkpoint_every <= 0:
        raise MotcuaError(f"--checkpoint-every {args.checkpoint_every:g}: give a number of "
                          "seconds above 0")
    provision(settings, settings.bootstrap, lambda _line: None)
    metrics = start_metrics(settings, f"archive-{args.site}" if args.site else "archive",
                            args.metrics_port)
    logs.setup(args.loglevel, settings.log_format, metrics.kafka_trouble)
    root = archive_dir(settings, args.dir, args.site).resolve()
    archive = Archive.open(root)
    try:
        for line in archive.repair():  # open() repaired already; this only lists leftovers
            say(f"archive: {line}")
        held, refused = archive.counts()
        say(f"archive: {root} holds {held:,} events ({refused:,} records refused)")
        signer = None
        if args.site:
            keys = audit_keys(settings)
            signer = Signer(checkpoint_name(args.site), keys(args.site), args.checkpoint_every,
                            load_registry(settings.keys_path / "audit"))
            say(f"archive: signs a checkpoint every {args.checkpoint_every:g} s as "
                f"{signer.name} and cosigns the other site's (keys in "
                f"{settings.keys_path / 'audit'})")
        consumer = ArchiveConsumer(archive, settings.kafka_config(settings.bootstrap),
                                   registry, prefix=settings.topic_prefix, signer=signer,
                                   metrics=metrics)
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


def audit_keys(settings: Settings) -> Keyring:
    """The sites' checkpoint keys (``<keys>/audit``, created if missing; both sites' public
    keys in that folder's registry.json: each witnesses the other)."""
    folder = settings.keys_path / "audit"
    try:
        init_keystore(folder, SITES)
    except FileExistsError:  # the other site's archive, started at once, made it first
        time.sleep(0.5)
        init_keystore(folder, SITES)
    return Keyring(folder)


def _line(consumer: ArchiveConsumer) -> str:
    line = (f"archive: {consumer.archived:,} events archived, {consumer.refused:,} refused, "
            f"{consumer.checkpoints:,} checkpoints signed, {consumer.cosignatures:,} "
            f"cosignatures received, {consumer.cosigned:,} of the other site's cosigned")
    if consumer.witness_refused:
        line += f", {consumer.witness_refused:,} REFUSED"
    return line + (f"; last error: {consumer.last_error}" if consumer.last_error else "")


def _open_for_reading(settings: Settings, given: str | None) -> Archive:
    return Archive.reader(archive_dir(settings, given).resolve())


def cmd_audit(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    if args.action == "replay":
        return cmd_replay(args, settings, say)
    if args.action in ("prove", "check"):
        return cmd_prove(args, settings, say)
    if args.source == "kafka":
        return cmd_verify_kafka(args, settings, say)
    from consumers.audit.verify import verify_archive

    registry = load_registry(settings.keys_path)
    archive = _open_for_reading(settings, args.dir)
    witnesses = [Archive.reader(Path(w).resolve()) for w in args.witness or []]
    if not args.witness and not args.dir:  # `motcua up`'s: the other site's, if it exists
        others = [archive_dir(settings, None, site).resolve() for site in SITES[1:]]
        witnesses = [Archive.reader(w) for w in others if (w / "index.db").exists()]
    try:
        started = time.perf_counter()
        audit_registry = settings.keys_path / "audit" / "registry.json"
        audit_keys = load_registry(audit_registry) if audit_registry.exists() else None
        report = verify_archive(archive, registry, args.signatures, audit_keys=audit_keys,
                                witnesses=witnesses)
        took = time.perf_counter() - started
    finally:
        archive.close()
        for w in witnesses:
            w.close()
    problems = report.problems or []
    if args.json:
        say(json.dumps({"archive": str(archive.root), "events": report.events,
                        "origins": report.origins, "signatures": args.signatures,
                        "signatures_checked": report.signatures_checked,
                        "checkpoints_checked": report.checkpoints,
                        "checkpoints_cosigned": report.cosigned,
                        "latest_cosigned": report.latest_cosigned,
                        "witnesses": [str(w.root) for w in witnesses],
                        "checkpoints_witnessed": report.witnessed,
                        "problems": [{"origin": p.origin, "seq": p.seq, "reason": p.reason}
                                     for p in problems]}, ensure_ascii=False, indent=2))
    else:
        for p in problems:
            say(f"PROBLEM {p}")
        say(f"audit verify: {report.events:,} events of {report.origins} origins in "
            f"{archive.root}; signatures: {args.signatures} ({report.signatures_checked:,} "
            f"checked); {report.checkpoints} signed checkpoints checked, "
            f"{report.cosigned} cosigned"
            + (f", {report.witnessed} in the witness's record "
               f"({', '.join(str(w.root) for w in witnesses)})" if witnesses else "")
            + "; "
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''}; "
            f"{took:.1f} s")
    return 1 if problems else 0


def cmd_verify_kafka(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    """``audit verify --source kafka``: the event topics checked, and against the archive."""
    from consumers.audit.kafka_source import read_log, verify_log

    registry = load_registry(settings.keys_path)
    root = archive_dir(settings, args.dir).resolve()
    archive = Archive.reader(root) if (root / "index.db").exists() else None
    try:
        started = time.perf_counter()
        report = verify_log(read_log(settings.kafka_config(settings.bootstrap),
                                     settings.topic_prefix, args.timeout),
                            registry, args.signatures, archive)
        took = time.perf_counter() - started
    finally:
        if archive is not None:
            archive.close()
    if args.json:
        say(json.dumps({"source": "kafka", "archive": str(root) if archive else None,
                        "records": report.records, "events": len(report.events),
                        "signatures": args.signatures,
                        "signatures_checked": report.signatures_checked,
                        "compared_with_archive": report.compared,
                        "problems": [{"origin": p.origin, "seq": p.seq, "reason": p.reason}
                                     for p in report.problems]},
                       ensure_ascii=False, indent=2))
    else:
        for p in report.problems:
            say(f"PROBLEM {p}")
        against = (f"{report.compared:,} compared with the archive in {root}" if archive
                   else f"no archive in {root} to compare with")
        say(f"audit verify --source kafka: {report.records:,} records, "
            f"{len(report.events):,} intact events; signatures: {args.signatures} "
            f"({report.signatures_checked:,} checked); {against}; {len(report.problems)} "
            f"problem{'s' if len(report.problems) != 1 else ''}; {took:.1f} s")
    return 1 if report.problems else 0


def cmd_prove(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    """``prove DOSSIER_ID``: the proof document; ``check FILE``: check one."""
    from consumers.audit.prove import check_proof, prove

    if not args.target:
        raise MotcuaError(f"audit {args.action} needs "
                          f"{'a dossier id' if args.action == 'prove' else 'a proof file'}")
    if args.action == "prove":
        archive = _open_for_reading(settings, args.dir)
        try:
            doc = prove(archive, args.target)
        finally:
            archive.close()
        say(json.dumps(doc, ensure_ascii=False, indent=1))
        return 0
    path = Path(args.target)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MotcuaError(f"{path.resolve()}: not a readable JSON proof ({exc})") from None
    keys = settings.keys_path / "audit" / "registry.json"
    if not keys.exists():
        raise MotcuaError(f"no sites' public keys at {keys}")
    try:
        held = check_proof(doc, load_registry(keys))
    except MotcuaError as exc:
        say(f"PROBLEM {path.resolve()}: {exc}")
        return 1
    for line in held:
        say(f"ok: {line}")
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    from consumers.audit.replay import differences, replay
    from schemas.snapshot import scope_figures
    from streams.reader import read_snapshots

    _check_period(args, "audit replay")
    started = time.perf_counter()
    if args.source == "kafka":
        from consumers.audit.kafka_source import read_log, verify_log
        from consumers.audit.replay import replay_events

        log = verify_log(read_log(settings.kafka_config(settings.bootstrap),
                                  settings.topic_prefix, args.timeout),
                         load_registry(settings.keys_path), "all")
        refused = [str(p) for p in log.problems]
        result = replay_events(log.events)
        where = f"the event topics at {settings.bootstrap}"
    else:
        archive = _open_for_reading(settings, args.dir)
        try:
            result = replay(archive)
        finally:
            archive.close()
        where, refused = str(archive.root), []
    took = time.perf_counter() - started
    replayed = result.figures(args.scope, args.start, args.end).as_dict()
    live: dict[str, object] | None = None
    if not args.no_live:
        snaps = read_snapshots(settings.kafka_config(settings.bootstrap),
                               settings.topic_prefix + COUNTERS, timeout=args.timeout)
        live = scope_figures(snaps, args.scope, args.start, args.end).as_dict()
    differ = differences(replayed, live) if live is not None else []
    if args.json:
        say(json.dumps({"source": args.source, "from_where": where,
                        "counter_rules": result.rules, "events": result.events,
                        "held_beyond_a_gap": [{"origin": o, "seq": n}
                                              for o, n in result.held],
                        "not_counted": refused,
                        "replay": replayed, "live": live, "differences": differ},
                       ensure_ascii=False, indent=1))
    else:
        say(f"audit replay: {args.scope} {args.start} … {args.end} from {result.events:,} "
            f"events ({where}), counter rules v{result.rules}, {took:.1f} s")
        for line in refused:
            say(f"  NOT COUNTED: {line}")
        if result.held:
            listed = ", ".join(f"{o} seq {n}" for o, n in result.held[:10])
            say(f"  NOT COUNTED: {len(result.held):,} events archived beyond a gap in their "
                f"origin's chain ({listed}{', …' if len(result.held) > 10 else ''}); they "
                "count once the events before them arrive (docs/audit.md)")
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
    from consumers.audit.report import (
        Meta,
        cosigned_checkpoint,
        rows,
        write_csv,
        write_json,
        write_xlsx,
    )

    _check_period(args, "report")
    if args.format == "xlsx" and not args.out:
        raise MotcuaError("--format xlsx needs --out FILE (a spreadsheet is not for a "
                          "terminal)")
    out = Path(args.out).resolve() if args.out else None
    if out is not None and not out.parent.is_dir():
        raise MotcuaError(f"--out {out}: the folder {out.parent} does not exist")
    archive = _open_for_reading(settings, args.dir)
    try:
        # a report stands on the newest cosigned checkpoint: exactly its events are counted
        cosigned = cosigned_checkpoint(archive)
        result = replay(archive, cosigned[0] if cosigned else None)
    finally:
        archive.close()
    table = rows(result, args.start, args.end, args.scope)
    _, summary, note = cosigned or (None, None, None)
    meta = Meta(args.start, args.end, result.events, result.rules, str(archive.root),
                summary, note, len(result.held))
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
    r.add_argument("--from", dest="start", type=parse_date, metavar="YYYY-MM-DD",
                   help="first local date (required)")
    r.add_argument("--to", dest="end", type=parse_date, metavar="YYYY-MM-DD",
                   help="last local date, inclusive (required)")
    r.add_argument("--scope", type=parse_scope, default=None,
                   help="one scope only (province, site:ID, commune:CODE); default all")
    r.add_argument("--format", choices=["xlsx", "csv", "json"], default="xlsx",
                   help="the file's format (default xlsx, which needs --out)")
    r.add_argument("--out", help="the file to write (csv and json print when absent)")
    r.add_argument("--dir", help="the archive's folder (default: $MOTCUA_DATA_DIR/archive)")
    r.set_defaults(func=lambda a_, s: cmd_report(a_, s, say))

    a = sub.add_parser("audit", help="check the audit archive (verify) and recompute "
                       "figures from it (replay)")
    a.add_argument("action", choices=["verify", "replay", "prove", "check"],
                   help="verify: is the archive complete and untampered (every problem named "
                   "by origin and seq; exit 1 on any); replay: a period's figures from the "
                   "archived events, beside the live ones (exit 1 if they differ); prove "
                   "DOSSIER_ID: the dossier's events with inclusion proofs against the newest "
                   "cosigned checkpoint (JSON); check FILE: check such a proof with the "
                   "sites' public keys")
    a.add_argument("target", nargs="?", help="prove: a dossier id; check: a proof file")
    a.add_argument("--dir", help="the archive's folder (default: $MOTCUA_DATA_DIR/archive)")
    a.add_argument("--signatures", choices=["all", "heads"], default="all",
                   help="check every event's signature (all, on every core) or each "
                   "origin's last one (heads: enough once hashes and links hold; "
                   "docs/audit.md)")
    a.add_argument("--witness", action="append", metavar="DIR",
                   help="verify: a witness site's archive; the checkpoints it cosigned must "
                   "hold against this archive (default without --dir: the other site's "
                   "archive of `motcua up`, if there is one)")
    a.add_argument("--source", choices=["archive", "kafka"], default="archive",
                   help="verify, replay: read the archive (default) or the event topics "
                   "(verify then also compares them with the archive)")
    a.add_argument("--json", action="store_true", help="the report as JSON")
    a.add_argument("--scope", type=parse_scope, default=PROVINCE,
                   help="replay: province, site:ID or commune:CODE")
    a.add_argument("--from", dest="start", type=parse_date, metavar="YYYY-MM-DD",
                   help="replay: first local date")
    a.add_argument("--to", dest="end", type=parse_date, metavar="YYYY-MM-DD",
                   help="replay: last local date (inclusive)")
    a.add_argument("--no-live", action="store_true",
                   help="replay: do not read the live figures from Kafka")
    a.add_argument("--timeout", type=seconds, default=30.0, metavar="SECONDS",
                   help="seconds without progress before reading a topic to its end is "
                   "given up (default 30)")
    a.set_defaults(func=lambda a_, s: cmd_audit(a_, s, say))

    p = sub.add_parser("archive", help="keep the audit archive: every verified event, in "
                       "compressed append-only segments per origin and day")
    p.add_argument("--dir", help="the archive's folder (default: $MOTCUA_DATA_DIR/archive)")
    p.add_argument("--site", choices=list(SITES),
                   help="sign checkpoints of this archive as this provincial site")
    p.add_argument("--checkpoint-every", type=seconds, default=60.0, metavar="SECONDS",
                   help="seconds between two checkpoints (default 60; one also when the "
                   "local day ends)")
    p.add_argument("--loglevel", default="WARNING", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="how much the archive logs to stderr (default WARNING)")
    add_metrics_port(p)
    p.set_defaults(func=lambda a, s: cmd_archive(a, s, say))

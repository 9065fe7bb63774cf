"""``motcua archive`` (the audit archive's consumer) and, as they are built, the audit
commands (issue 13)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

from consumers.audit.archive import ArchiveConsumer
from consumers.audit.store import Archive
from infra.cli.bootstrap import provision
from infra.db import make_engine
from infra.process import Loop, StopSignals
from infra.settings import Settings
from schemas.errors import MotcuaError
from schemas.keys import load_registry

Say = Callable[[str], None]


def archive_dir(settings: Settings, given: str | None) -> Path:
    return Path(given) if given else settings.data_dir / "archive"


def cmd_archive(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    registry = load_registry(settings.keys_path)  # a missing keystore: say so before anything
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
        consumer = ArchiveConsumer(archive, settings.kafka_config(settings.bootstrap),
                                   registry, prefix=settings.topic_prefix)
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


def _line(consumer: ArchiveConsumer) -> str:
    line = f"archive: {consumer.archived:,} events archived, {consumer.refused:,} refused"
    return line + (f"; last error: {consumer.last_error}" if consumer.last_error else "")


def cmd_audit(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    import json
    import time

    from consumers.audit.verify import verify_archive

    root = archive_dir(settings, args.dir).resolve()
    if not (root / "index.db").exists():
        raise MotcuaError(f"no archive in {root}: `motcua archive` (or `motcua up`) keeps "
                          "one; --dir names another")
    registry = load_registry(settings.keys_path)
    archive = Archive(root, make_engine(f"sqlite:///{root / 'index.db'}"))  # read-only use
    try:
        started = time.perf_counter()
        report = verify_archive(archive, registry, args.signatures)
        took = time.perf_counter() - started
    finally:
        archive.close()
    problems = report.problems or []
    if args.json:
        say(json.dumps({"archive": str(root), "events": report.events,
                        "origins": report.origins, "signatures": args.signatures,
                        "signatures_checked": report.signatures_checked,
                        "problems": [{"origin": p.origin, "seq": p.seq, "reason": p.reason}
                                     for p in problems]}, ensure_ascii=False, indent=2))
    else:
        for p in problems:
            say(f"PROBLEM {p}")
        say(f"audit verify: {report.events:,} events of {report.origins} origins in {root}; "
            f"signatures: {args.signatures} ({report.signatures_checked:,} checked); "
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''}; {took:.1f} s")
    return 1 if problems else 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], say: Say) -> None:
    a = sub.add_parser("audit", help="check the audit archive (verify)")
    a.add_argument("action", choices=["verify"], help="verify: is the archive complete and "
                   "untampered (every problem named by origin and seq; exit 1 on any)")
    a.add_argument("--dir", help="the archive's folder (default: $MOTCUA_DATA_DIR/archive)")
    a.add_argument("--signatures", choices=["all", "heads"], default="all",
                   help="check every event's signature (all, on every core) or each "
                   "origin's last one (heads: enough once hashes and links hold; "
                   "docs/audit.md)")
    a.add_argument("--json", action="store_true", help="the report as JSON")
    a.set_defaults(func=lambda a_, s: cmd_audit(a_, s, say))

    p = sub.add_parser("archive", help="keep the audit archive: every verified event, in "
                       "compressed append-only segments per origin and day")
    p.add_argument("--dir", help="the archive's folder (default: $MOTCUA_DATA_DIR/archive)")
    p.add_argument("--loglevel", default="WARNING", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=lambda a, s: cmd_archive(a, s, say))

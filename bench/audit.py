"""The audit at July scale (issue 13): the archive's write cost and size, a checkpoint,
verify and replay from the archive, verify from Kafka, and the peer: PostgreSQL computing
the month's receipts with GROUP BY over the same events loaded into a table.

One simulated July (1-30 July 2025, scale 1 by default; simulated once and cached under
var/bench, which takes 20-25 minutes) is:

1. **archived** as ``motcua archive`` does, in batches of 5,000: decoded and hash-checked,
   signature checked, judged against the chains, appended (segments and index). The decode
   and check, and the append, are timed apart; the archive's size is measured on disk;
2. **checkpointed** once (the tree over every event, signed);
3. repeated ``REPEATS`` times, each timed:
   * ``audit verify --signatures heads`` with the checkpoint (hashes, index against
     segments, chains, head signatures, the checkpoint rebuilt);
   * ``audit replay``: every event decoded, folded and counted; the province's July
     receipts are printed;
   * ``audit verify --signatures all`` on every core, beside one thread checking every
     signature and nothing else (the per-core verify limit);
   * ``audit verify --source kafka --signatures heads`` over the same events in a fresh
     embedded broker, produced once (reading, decoding, hash and chain checks);
   * the peer: the events loaded into a PostgreSQL table (``COPY``: origin, seq, type,
     dossier, local date, the event as jsonb), then one ``GROUP BY`` of the month's receipts
     by receiving node and channel. Its province total and online count are compared with
     the replay's.

Run: ``.venv/bin/python -m bench.audit [REPEATS] [DAYS] [SCALE]`` (default 3, 30, 1.0;
REPEATS 0: steps 1 and 2 only).
PostgreSQL: ``MOTCUA_TEST_PG_URL`` (default: the local server of ``.ci/services.sh``).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import orjson
import psycopg

from bench.workload import simulated
from consumers.audit.kafka_source import read_log, verify_log
from consumers.audit.replay import replay
from consumers.audit.store import Accepted, Archive
from consumers.audit.verify import verify_archive
from consumers.audit.witness import checkpoint_name
from infra.broker import EmbeddedBroker
from schemas.chain import judge_in_order
from schemas.codec import decode
from schemas.counters import PROVINCE
from schemas.events import LOCAL_TZ
from schemas.integrity import check_signature, checked_event
from schemas.keys import Keyring, init_keystore, load_registry
from schemas.nodes import SITES
from tests.streams_support import produce, provision

PG_URL = os.environ.get("MOTCUA_TEST_PG_URL",
                        "postgresql+psycopg://postgres:motcua@127.0.0.1:5432/test"
                        ).replace("postgresql+psycopg://", "postgresql://")


def spread(values: list[float], fmt: str = ",.0f") -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def build(root: Path, records: list[tuple[str, bytes, bytes]], keys: Path
          ) -> tuple[float, float]:
    """(seconds decoding and checking, seconds appending): the archive consumer's work."""
    registry = load_registry(keys)
    archive = Archive.open(root)
    check = write = 0.0
    try:
        for start in range(0, len(records), 5000):
            batch = records[start:start + 5000]
            t0 = time.perf_counter()
            accepted = []
            checked = [Accepted(topic, 0, start + i, value, checked_event(key, value, registry))
                       for i, (topic, key, value) in enumerate(batch)]
            held, ids = archive.chain_around([a.event for a in checked])
            for a, verdict in judge_in_order(checked, lambda a: a.event, held, ids):
                assert verdict is None, verdict
                accepted.append(a)
            accepted.sort(key=lambda a: a.offset)
            t1 = time.perf_counter()
            archive.append(accepted, [], {("dossier-events", 0): start + len(batch)})
            check += t1 - t0
            write += time.perf_counter() - t1
    finally:
        archive.close()
    return check, write


def size_of(root: Path) -> tuple[int, int]:
    segments = sum(f.stat().st_size for f in (root / "segments").rglob("*.jsonl.gz"))
    index = sum(f.stat().st_size for f in root.glob("index.db*"))
    return segments, index


def postgres_peer(records: list[tuple[str, bytes, bytes]], start: date, end: date
                  ) -> tuple[float, float, int, int]:
    """(load seconds, query seconds, province receipts, online receipts)."""
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_audit_events")
        t0 = time.perf_counter()
        conn.execute("CREATE TABLE bench_audit_events (origin text, origin_seq bigint, "
                     "type text, dossier_id text, local_date date, event jsonb)")
        with conn.cursor() as cur, cur.copy(
                "COPY bench_audit_events FROM STDIN") as copy:
            for _, _, value in records:
                body = orjson.loads(value)
                local = datetime.fromisoformat(body["occurred_at"]).astimezone(LOCAL_TZ).date()
                copy.write_row((body["origin"], body["origin_seq"], body["type"],
                                body["dossier_id"], local, value.decode()))
        conn.execute("ANALYZE bench_audit_events")
        load = time.perf_counter() - t0
        t1 = time.perf_counter()
        rows = conn.execute(
            "SELECT event->'data'->>'receiving_node', event->'data'->>'channel', count(*) "
            "FROM bench_audit_events WHERE type = 'dossier.received' "
            "AND local_date BETWEEN %s AND %s GROUP BY ROLLUP (1, 2)", (start, end)).fetchall()
        query = time.perf_counter() - t1
        conn.execute("DROP TABLE bench_audit_events")
    total = next(n for node, ch, n in rows if node is None and ch is None)
    online = sum(n for node, ch, n in rows if node is not None and ch == "online")
    return load, query, total, online


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    days = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    scale = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
    keys, records = simulated(days, scale)
    start, end = date(2025, 7, 1), date(2025, 7, 1) + timedelta(days=days - 1)
    n = len(records)
    raw = sum(len(v) + 1 for _, _, v in records)
    print(f"# {n:,} events ({days} days at scale {scale}), {raw / 2**20:,.0f} MiB of wire "
          f"bytes; {repeats} repeats; {os.cpu_count()} cores", flush=True)
    registry = load_registry(keys)
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        root = Path(tmp) / "archive"
        t_check, t_write = build(root, records, keys)
        segs, index = size_of(root)
        print(f"archive: decode+check {t_check:.1f} s ({n / t_check:,.0f} ev/s), append "
              f"{t_write:.1f} s ({n / t_write:,.0f} ev/s, {t_write / n * 1e6:.1f} µs/event); "
              f"segments {segs / 2**20:,.1f} MiB ({segs / n:.0f} B/event, "
              f"{raw / segs:.1f}x smaller than the wire bytes), index {index / 2**20:,.1f} "
              "MiB", flush=True)
        init_keystore(Path(tmp) / "audit", SITES)
        audit_keys = load_registry(Path(tmp) / "audit")
        archive = Archive.open(root)
        t0 = time.perf_counter()
        archive.checkpoint(checkpoint_name(SITES[0]), Keyring(Path(tmp) / "audit")(SITES[0]),
                           "bench")
        t_cp = time.perf_counter() - t0
        archive.close()
        print(f"checkpoint of {n:,} leaves: {t_cp:.1f} s", flush=True)

        if repeats == 0:  # the archive's write cost and size only
            return
        sample = [decode(v) for _, _, v in records[:50_000]]
        results: dict[str, list[float]] = {k: [] for k in (
            "verify heads", "replay", "verify all", "one-thread verify limit", "kafka heads",
            "pg load", "pg query")}
        broker = EmbeddedBroker()
        broker.start()
        try:
            config = {"bootstrap_servers": [broker.bootstrap]}
            prefix = "bench-audit."
            provision(config, prefix)
            produce(config, prefix, records)  # once: each repeat reads the whole log again
            for r in range(repeats):
                reader = Archive.reader(root)
                t0 = time.perf_counter()
                rep = verify_archive(reader, registry, "heads", audit_keys=audit_keys)
                results["verify heads"].append(n / (time.perf_counter() - t0))
                assert rep.ok and rep.events == n and rep.checkpoints == 1, rep.problems
                t0 = time.perf_counter()
                figures = replay(reader).figures(PROVINCE, start, end)
                results["replay"].append(n / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                rep = verify_archive(reader, registry, "all")
                results["verify all"].append(n / (time.perf_counter() - t0))
                assert rep.ok, rep.problems
                reader.close()
                t0 = time.perf_counter()
                for e in sample:
                    check_signature(e, registry)
                results["one-thread verify limit"].append(len(sample) /
                                                          (time.perf_counter() - t0))
                t0 = time.perf_counter()
                log = verify_log(read_log(config, prefix), registry, "heads")
                results["kafka heads"].append(n / (time.perf_counter() - t0))
                assert not log.problems and len(log.events) == n, log.problems[:3]
                load, query, total, online = postgres_peer(records, start, end)
                results["pg load"].append(load)
                results["pg query"].append(query)
                print(f"repeat {r + 1}: replay July: {figures.received:,} received, "
                      f"{figures.flows['received.online']:,} online ({figures.online_rate}%);"
                      f" PostgreSQL: {total:,} received, {online:,} online; "
                      + "; ".join(f"{k} {v[-1]:,.1f}" for k, v in results.items()),
                      flush=True)
                assert (total, online) == (figures.received, figures.flows["received.online"])
        finally:
            broker.stop()
    print(f"\n| step | {n:,} events, median (spread) of {repeats} |\n|---|---:|")
    for name in ("verify heads", "replay", "verify all", "one-thread verify limit",
                 "kafka heads"):
        print(f"| {name} | {spread(results[name])} events/s |")
    ratio = [a / b for a, b in zip(results["verify all"], results["one-thread verify limit"],
                                   strict=True)]
    print(f"| verify all ÷ one-thread verify limit | {spread(ratio, '.2f')} |")
    print(f"| PostgreSQL: COPY and ANALYZE | {spread(results['pg load'], '.1f')} s |")
    print(f"| PostgreSQL: the month's receipts, GROUP BY | {spread(results['pg query'], '.2f')}"
          " s |")
    replay_s = [n / x for x in results["replay"]]
    print(f"| motcua replay, every figure of every scope | {spread(replay_s, '.1f')} s |")


if __name__ == "__main__":
    main()

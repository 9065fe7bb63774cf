"""The stream worker's memory as history grows (issue 11: RSS < 1 GiB for a year).

A year is ~8.6 M events and ~1.9 M dossiers. The worker keeps at most ``cache`` folded
subjects in memory (MOTCUA_STREAMS_CACHE, default 100,000) and the rest in its store, so
its RSS should grow with the history only until the cache is full, then stay flat. This
runs one verified `motcua streams` from an empty store over more and more copies of a
simulated week (bench/workload.py: each copy is another set of dossiers), below and beyond
the cache size, and reports rate, peak RSS and exactness of each run.

Run: ``.venv/bin/python -m bench.worker_memory [COPIES ...]`` (default 3 9 15).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.engine import recount_of
from bench.streams import timed_worker
from bench.workload import multiplied, simulated
from infra.broker import EmbeddedBroker
from schemas.codec import decode
from tests.streams_support import produce, provision


def main(copies: list[int]) -> None:
    keys, base = simulated(7, 0.3)
    print("| copies of the week | dossier events | dossiers | events/s, verified | "
          "peak RSS MiB | exact |\n|---:|---:|---:|---:|---:|---|", flush=True)
    for n in copies:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            records = [r for r in multiplied(keys, base, n) if r[0] == "dossier-events"]
            dossiers = len({decode(v).dossier_id for _, _, v in records})
            expected = recount_of(records)
            with EmbeddedBroker(log_path=tmp / "tansu.log") as broker:
                cfg = {"bootstrap_servers": [broker.bootstrap]}
                provision(cfg, "m.")
                produce(cfg, "m.", records)
                started = time.perf_counter()
                secs, exact, rss = timed_worker(tmp, broker.bootstrap, "m.", keys,
                                                len(records), expected)
            print(f"| {n} | {len(records):,} | {dossiers:,} | {len(records) / secs:,.0f} | "
                  f"{rss:,.0f} | {exact} |  ({time.perf_counter() - started:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [3, 9, 15])

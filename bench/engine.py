"""The stream worker's speed (issue 11): events/s per worker process, with its yardsticks in
the same run, repeated.

Per repeat, on the same events in fresh topics of one broker:

* **per-core limit**: one thread that consumes (aiokafka ``getmany``), decodes and verifies
  every signature: what one Python core can do before any folding; and the same without
  verifying, the ceiling of ``--no-verify``;
* **motcua streams**, signatures verified, then ``--no-verify``: a fresh worker and an empty
  store, timed from its first stored position to its last; its counters are compared with
  the batch recount at the end (``exact``);
* **peer: a bare Quix Streams count per key** (bench/peers/quix_bare.py), no decode.

The events: a simulated week (7 days at scale 0.3) multiplied ``COPIES`` times by re-sealing
every event as another dossier with the same keys, chains intact (bench/workload.py).
Each row is reported as the median of the repeats and their spread (min-max).

Run: ``.venv/bin/python -m bench.engine [REPEATS] [COPIES]`` (default 3 and 3).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from bench.streams import timed_peer, timed_worker
from bench.workload import multiplied, simulated
from infra.broker import EmbeddedBroker
from schemas.codec import decode
from schemas.integrity import check_signature
from schemas.keys import load_registry
from tests.streams_support import produce, provision


async def _consume_decode_verify(bootstrap: str, topic: str, total: int, keys: Path,
                                 verify: bool = True) -> float:
    """Seconds for one thread to consume, decode and (if ``verify``) verify ``total``
    records."""
    registry = load_registry(keys)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                fetch_max_wait_ms=100,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        seen, first = 0, 0.0
        while seen < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            if not first and batch:
                first = time.perf_counter()
            for messages in batch.values():
                for m in messages:
                    event = decode(m.value)
                    if verify:
                        check_signature(event, registry)
                    seen += 1
        return time.perf_counter() - first
    finally:
        await consumer.stop()


LIMIT = "per-core limit: consume + decode + verify, one thread"
DECODE = "consume + decode alone, one thread"
VERIFIED = "motcua streams, signatures verified"
UNVERIFIED = "motcua streams --no-verify"
QUIX = "peer: Quix Streams, bare count per key"


def main(repeats: int = 3, copies: int = 3) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        keys, base = simulated(7, 0.3)
        started = time.perf_counter()
        records = multiplied(keys, base, copies)
        dossier = [r for r in records if r[0] == "dossier-events"]
        expected = recount_of(dossier)
        total = len(dossier)
        print(f"{total:,} dossier events ({copies} x 7 simulated days at scale 0.3, re-sealed "
              f"in {time.perf_counter() - started:.0f} s), 12 partitions, tansu, "
              f"2 cores, {repeats} repeats", flush=True)
        rows: dict[str, list[float]] = {}
        exact: list[bool] = []
        rss: list[float] = []
        with EmbeddedBroker(log_path=tmp / "tansu.log") as broker:
            cfg = {"bootstrap_servers": [broker.bootstrap]}
            for r in range(repeats):
                for name in ("v", "nv", "qb", "lim", "dec"):
                    provision(cfg, f"{name}{r}.")
                    produce(cfg, f"{name}{r}.", dossier)
                secs = asyncio.run(_consume_decode_verify(
                    broker.bootstrap, f"lim{r}.dossier-events", total, keys))
                rows.setdefault(LIMIT, []).append(total / secs)
                secs = asyncio.run(_consume_decode_verify(
                    broker.bootstrap, f"dec{r}.dossier-events", total, keys, verify=False))
                rows.setdefault(DECODE, []).append(total / secs)
                secs, ok, peak = timed_worker(tmp, broker.bootstrap, f"v{r}.", keys, total,
                                              expected)
                rows.setdefault(VERIFIED, []).append(total / secs)
                exact.append(ok)
                rss.append(peak)
                secs, ok, _ = timed_worker(tmp, broker.bootstrap, f"nv{r}.", keys, total,
                                           expected, "--no-verify")
                rows.setdefault(UNVERIFIED, []).append(total / secs)
                exact.append(ok)
                secs, seen = timed_peer("bench.peers.quix_bare", broker.bootstrap,
                                        f"qb{r}.dossier-events", total, tmp / f"quix{r}")
                rows.setdefault(QUIX, []).append(
                    seen / secs if secs else float("nan"))
                print(f"repeat {r + 1}: " + ", ".join(f"{v[-1]:,.0f}" for v in rows.values()),
                      flush=True)
        print("\n| consumer | events/s, median | spread (min-max) |\n|---|---:|---:|")
        for name, values in rows.items():
            print(f"| {name} | {statistics.median(values):,.0f} | "
                  f"{min(values):,.0f}-{max(values):,.0f} |")
        def per_repeat(label: str, top: str, bottom: str) -> None:
            ratio = [a / b for a, b in zip(rows[top], rows[bottom], strict=True)]
            print(f"{label}, per repeat: {', '.join(f'{x:.2f}' for x in ratio)} "
                  f"(median {statistics.median(ratio):.2f})")
        print()
        per_repeat("--no-verify / Quix bare count", UNVERIFIED, QUIX)
        per_repeat("consume + decode alone / Quix bare count", DECODE, QUIX)
        per_repeat("--no-verify / consume + decode alone", UNVERIFIED, DECODE)
        per_repeat("verified / per-core limit", VERIFIED, LIMIT)
        print(f"counters equal the recount in every run: {all(exact)}; worker peak RSS "
              f"{min(rss):.0f}-{max(rss):.0f} MiB")


def recount_of(records: list[tuple[str, bytes, bytes]]) -> dict[tuple[str, str, str], int]:
    from schemas.counters import recount
    return recount([decode(v) for _, _, v in records])


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3,
         int(sys.argv[2]) if len(sys.argv) > 2 else 3)

"""Where a stream worker's time goes, per event and per stage (issue 11): the same
``streams.processor`` the worker runs, fed in-process (no broker, no faust), with each
stage timed, and a bare count per key over the same records as a floor.

Stages, as ``Processor.prepare`` / ``commit`` run them on batches of 2,000:

* **decode**: ``schemas.integrity.checked_event`` without the signature (parse, upcast,
  validate, the canonical-bytes check, the content hash), and the topic check;
* **verify**: the Ed25519 signature (``check_signature``), on this thread here; the worker
  runs it on two verifier threads beside the decode;
* **chain**: the store's chain around the batch (``StreamStore.chain_around``) and the link
  and fork rule (``schemas.chain.judge``);
* **restore**: subjects the projector does not hold, read back from the store;
* **fold**: ``streams.projector`` (apply or refold, contributions, deltas);
* **write**: the batch's transaction (``StreamStore.write``);
* the rest of ``prepare``/``commit`` (positions, batching, dead letters) is "other".

Each repeat uses the worker's GC settings (``streams.worker.freeze_heap``) and a fresh
SQLite store (a file in a temporary folder, as ``motcua up``). The floor, "count per key",
reads each record's key into a dict, which is all a bare Quix count per key does per record
besides consuming.

Run: ``.venv/bin/python -m bench.engine_stages [REPEATS] [COPIES]`` (default 3 and 3).
"""

from __future__ import annotations

import gc
import statistics
import sys
import tempfile
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.workload import multiplied, simulated
from infra.db import make_engine
from schemas.integrity import check_signature, checked_event
from schemas.keys import load_registry
from streams.processor import CALLS, DOSSIERS, Processor, Record, open_store
from streams.worker import freeze_heap

PARTITIONS = 12
BATCH = 2000
STAGES = ("decode", "verify", "chain", "restore", "fold", "write", "other")


class Clock:
    """Seconds spent in each stage."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)

    def timed(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[stage] += time.perf_counter() - start
        return run


def as_records(records: list[tuple[str, bytes, bytes]]) -> list[Record]:
    """The records as a 12-partition topic would hold them (partition by key)."""
    offsets: dict[int, int] = defaultdict(int)
    out = []
    for topic, key, value in records:
        partition = zlib.crc32(key) % PARTITIONS
        out.append(Record(topic, partition, offsets[partition], key, value))
        offsets[partition] += 1
    return out


def one_run(records: list[Record], keys: Path, tmp: Path, verify: bool) -> dict[str, float]:
    """Seconds per stage for one fresh store over ``records``."""
    clock = Clock()
    threshold = gc.get_threshold()
    engine = make_engine(f"sqlite:///{tmp / f'stages-{time.monotonic_ns()}.db'}",
                         sqlite_sync="NORMAL")  # as the worker opens its store
    open_store(engine)
    proc = Processor(engine, {"dossier-events": DOSSIERS, "hotline-events": CALLS}, None,
                     worker="bench")
    proc.store.write = clock.timed("write", proc.store.write)  # type: ignore[method-assign]
    proc._chained = clock.timed("chain", proc._chained)  # type: ignore[method-assign]
    proc._restore = clock.timed("restore", proc._restore)  # type: ignore[method-assign]
    proc.projector.project = clock.timed(  # type: ignore[method-assign]
        "fold", proc.projector.project)
    proc._check = clock.timed("decode", proc._check)  # type: ignore[method-assign]
    registry = load_registry(keys)
    check = clock.timed("verify", check_signature)
    freeze_heap()  # the worker's GC settings
    try:
        start = time.perf_counter()
        for i in range(0, len(records), BATCH):
            proc.commit(proc.prepare(records[i:i + BATCH]))
        total = time.perf_counter() - start
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
        engine.dispose()
    if verify:  # the signatures of the same events, timed alone on this thread
        events = [checked_event(r.key, r.value, None, signatures=False)
                  for r in records]
        for event in events:
            check(event, registry)
    spent = dict(clock.spent)
    spent["other"] = total - sum(v for k, v in spent.items() if k not in ("verify", "other"))
    return spent


def main(repeats: int = 3, copies: int = 3) -> None:
    keys, base = simulated(7, 0.3)
    raw = [r for r in multiplied(keys, base, copies) if r[0] == "dossier-events"]
    records = as_records(raw)
    n = len(records)
    print(f"{n:,} dossier events ({copies} x 7 simulated days at scale 0.3), in-process, "
          f"SQLite, batches of {BATCH:,}, {repeats} repeats", flush=True)
    runs: list[dict[str, float]] = []
    floor: list[float] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        for r in range(repeats):
            start = time.perf_counter()
            counts: dict[bytes | None, int] = {}
            for rec in records:
                counts[rec.key] = counts.get(rec.key, 0) + 1
            floor.append(time.perf_counter() - start)
            runs.append(one_run(records, keys, Path(tmp_name), verify=True))
            print(f"repeat {r + 1}: " + ", ".join(
                f"{s} {runs[-1].get(s, 0.0) / n * 1e6:.1f}" for s in STAGES) + " µs/event",
                flush=True)
    print("\n| stage | µs per event, median | spread (min-max) | share of the worker's "
          "work without verify |\n|---|---:|---:|---:|")
    worker = [sum(v for k, v in run.items() if k != "verify") for run in runs]
    for stage in STAGES:
        values = [run.get(stage, 0.0) / n * 1e6 for run in runs]
        shares = [run.get(stage, 0.0) / w for run, w in zip(runs, worker, strict=True)]
        share = "" if stage == "verify" else f"{statistics.median(shares):.0%}"
        print(f"| {stage} | {statistics.median(values):.1f} | {min(values):.1f}-"
              f"{max(values):.1f} | {share} |")
    totals = [w / n * 1e6 for w in worker]
    print(f"| **worker without verify, in-process** | {statistics.median(totals):.1f} | "
          f"{min(totals):.1f}-{max(totals):.1f} | 100% |")
    floors = [f / n * 1e6 for f in floor]
    print(f"| floor: count per key (a dict) | {statistics.median(floors):.2f} | "
          f"{min(floors):.2f}-{max(floors):.2f} | |")
    print(f"\nevents/s without verify, in-process: "
          f"{statistics.median(n / w for w in worker):,.0f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3,
         int(sys.argv[2]) if len(sys.argv) > 2 else 3)

"""The pipeline's throughput on both brokers, side by side in one run, with what the broker
costs meanwhile.

One simulated workload (every event of D days of July at scale 0.3, real signatures: full
dossier lifecycles and hotline calls) is written once to a SQLite node store. Then, for each
repeat, each broker in turn (tansu, then a 3-node Apache Kafka KRaft cluster; started fresh,
and alone: the other is stopped) takes, in this order:

* direct: the store's outbox sent straight from memory by a kafka-python producer with the
  relay's settings (idempotent, acks=all, linger 5 ms): ``bench.relay.direct_rate``;
* relay: the relay publishing a copy of that store's outbox, marking every row
  (``bench.relay.relay_rate``);
* streams: a `motcua streams` process (signatures verified, as in production) folding every
  dossier event to its end, timed from the first event stored to the last, counters checked
  against the batch recount (``bench.streams.timed_worker``);
* sync: `motcua sync --node site-phohien` (signatures verified) building an empty SQLite
  replica from every event, timed from process start to the last position stored, rows
  checked against the node store (``bench.sync_catchup.catch_up``).

Over each timed section the broker's processes (tansu's, or the three JVMs) are sampled:
CPU seconds (utime + stime) and peak RSS (``bench.brokers.Usage``). Topics are made by
``ensure_topics``: replication factor 3 and min.insync.replicas 2 on Kafka, 1 on tansu.
Consumer groups use a 2000 ms session timeout on tansu and 6000 ms on Kafka (its minimum).
The table gives, per measurement and broker, the median over the repeats and the min-max,
and the kafka/tansu ratio of each repeat's pair (median, min-max).

Run: ``.venv/bin/python -m bench.brokers_compare [--repeats 3] [--events 15000]``
(``--events`` picks the number of simulated days, about 7,700 events a day at scale 0.3).
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from bench.brokers import KINDS, RunningBroker, Usage, each_broker, rss_bytes
from bench.relay import direct_rate, outbox_rows, relay_rate
from bench.streams import timed_worker
from bench.sync_catchup import catch_up, produce_store
from consumers.sync.replica import Replica
from infra.db import make_engine
from infra.topics import admin_client, ensure_topics
from schemas.topics import topic_specs
from tests.streams_support import Workload, produce, provision, simulate
from tests.sync_support import node_rows

SCALE = 0.3
EVENTS_PER_DAY = 7_700  # at scale 0.3, July's first days (3 days: 23,189 events)
MIB = 2**20

# measurement -> its row label (rates in events/s)
MEASURES = {
    "direct": "direct produce: kafka-python, relay's settings, no outbox",
    "relay": "relay: read outbox, publish, mark",
    "streams": "stream worker, signatures verified",
    "sync": "sync catch-up into SQLite, signatures verified",
}


@dataclass
class Sample:
    rate: float  # events/s (nan: failed)
    cpu: float  # broker CPU seconds over the section
    rss: float  # broker peak RSS over the section, MiB
    seconds: float  # the section's wall time


@dataclass
class Shared:
    tmp: Path
    work: Workload
    store: Path  # the simulated node store (never written after the simulation)
    total: int  # every event of the store
    dossier_events: int
    want: list[dict[str, object]]  # the node store's rows, for the replica check


def copy_sqlite(src: Path, dst: Path) -> None:
    """A consistent copy (WAL included) through SQLite's backup API."""
    with closing(sqlite3.connect(src)) as a, closing(sqlite3.connect(dst)) as b:
        a.backup(b)


def sample(usage: Usage, rate: float) -> Sample:
    return Sample(rate, usage.cpu, usage.peak_rss / MIB, usage.seconds)


def run_direct(b: RunningBroker, s: Shared, here: Path) -> Sample:
    rows = outbox_rows(f"sqlite:///{s.store}")
    admin = admin_client(b.config)
    try:
        ensure_topics(admin, topic_specs("direct."))
    finally:
        admin.close()
    with Usage(b.pids) as usage:
        rate = direct_rate(b.config, rows)
    return sample(usage, rate)


def run_relay(b: RunningBroker, s: Shared, here: Path) -> Sample:
    store = here / "relay-nodes.db"
    copy_sqlite(s.store, store)
    admin = admin_client(b.config)
    try:
        ensure_topics(admin, topic_specs("relay."))
    finally:
        admin.close()
    with Usage(b.pids) as usage:
        rate = relay_rate(f"sqlite:///{store}", b.config)
    return sample(usage, rate)


def run_streams(b: RunningBroker, s: Shared, here: Path) -> Sample:
    prefix = "v."
    records = [r for r in s.work.records if r[0] == "dossier-events"]
    expected = {k: v for k, v in s.work.expected().items() if not k[2].startswith("hotline")}
    provision(b.config, prefix)
    produce(b.config, prefix, records)
    usage = Usage(b.pids)
    seconds, exact, _ = timed_worker(here, b.bootstrap, prefix, s.work.keys_dir, len(records),
                                     expected, usage=usage, env=b.group_env)
    if not exact:
        raise AssertionError("the worker's counters differ from the batch recount")
    return sample(usage, len(records) / seconds)


def run_sync(b: RunningBroker, s: Shared, here: Path) -> Sample:
    prefix = "cu."
    provision(b.config, prefix)
    total, ends = produce_store(f"sqlite:///{s.store}", b.bootstrap, prefix)
    db = f"sqlite:///{here}/{{node}}.db"
    usage = Usage(b.pids)
    seconds, _ = catch_up(here, b.bootstrap, prefix, s.work.keys_dir, ends, db, usage=usage,
                          **b.group_env)
    replica = Replica.open(make_engine(db.format(node="site-phohien")), "site-phohien")
    try:
        if replica.rows() != s.want:
            raise AssertionError("the replica's rows differ from the node store's")
    finally:
        replica.engine.dispose()
    return sample(usage, total / seconds)


RUNS: dict[str, Callable[[RunningBroker, Shared, Path], Sample]] = {
    "direct": run_direct, "relay": run_relay, "streams": run_streams, "sync": run_sync}


def spread(values: list[float], fmt: str, none: str = "fails") -> str:
    """median (min–max) of what did not fail; ``none`` if nothing is left."""
    ok = [v for v in values if not math.isnan(v)]
    if not ok:
        return none
    if fmt == "ratio":  # two decimals, or none from 10 up (a ratio against ~0 CPU)
        fmt = ".2f" if max(ok) < 10 else ",.0f"
    text = f"{statistics.median(ok):{fmt}} ({min(ok):{fmt}}–{max(ok):{fmt}})"
    failed = len(values) - len(ok)
    return text + (f", {failed} undefined or failed" if failed else "")


def ratios(a: list[float], b: list[float]) -> list[float]:
    """b/a of each repeat's pair (nan where either failed)."""
    return [y / x if x and not (math.isnan(x) or math.isnan(y)) else math.nan
            for x, y in zip(a, b, strict=True)]


def table(results: dict[tuple[str, str], list[Sample]], starts: dict[str, list[float]],
          idle: dict[str, list[float]]) -> str:
    lines = ["| measurement | tansu: median (min–max) | kafka, 3 nodes: median (min–max) "
             "| kafka / tansu: median (min–max) |", "|---|---:|---:|---:|"]

    def row(label: str, t: list[float], k: list[float], fmt: str) -> None:
        lines.append(f"| {label} | {spread(t, fmt)} | {spread(k, fmt)} | "
                     f"{spread(ratios(t, k), 'ratio', '–')} |")

    for m, label in MEASURES.items():
        row(f"{label}, events/s", [x.rate for x in results["tansu", m]],
            [x.rate for x in results["kafka", m]], ",.0f")
    t_ratio = ratios([x.rate for x in results["tansu", "direct"]],
                     [x.rate for x in results["tansu", "relay"]])
    k_ratio = ratios([x.rate for x in results["kafka", "direct"]],
                     [x.rate for x in results["kafka", "relay"]])
    row("relay / direct", t_ratio, k_ratio, "ratio")
    for m in MEASURES:
        row(f"broker CPU s during {m}", [x.cpu for x in results["tansu", m]],
            [x.cpu for x in results["kafka", m]], ".2f")
    for m in MEASURES:
        row(f"broker peak RSS during {m}, MiB", [x.rss for x in results["tansu", m]],
            [x.rss for x in results["kafka", m]], ",.0f")
    row("broker RSS when ready, before any topic, MiB", idle["tansu"], idle["kafka"], ",.0f")
    row("broker start until ready, s", starts["tansu"], starts["kafka"], ".1f")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.brokers_compare",
                                     description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--events", type=int, default=15_000,
                        help="about this many events: the simulated days at scale 0.3")
    args = parser.parse_args(argv)
    days = max(1, min(30, round(args.events / EVENTS_PER_DAY)))
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="brokers-compare-") as tmp_name:
        tmp = Path(tmp_name)
        work = simulate(tmp / "sim", date(2025, 7, 1), date(2025, 7, days), scale=SCALE)
        store = tmp / "sim" / "nodes.db"
        want = node_rows(f"sqlite:///{store}")
        shared = Shared(tmp, work, store, len(work.records),
                        sum(r[0] == "dossier-events" for r in work.records), want)
        print(f"{shared.total:,} events ({shared.dossier_events:,} dossier events, "
              f"{len(want):,} dossiers), {days} simulated days at scale {SCALE}; "
              f"{args.repeats} repeats, brokers interleaved {', '.join(KINDS)}; "
              f"simulated in {time.monotonic() - began:.0f} s", flush=True)
        results: dict[tuple[str, str], list[Sample]] = defaultdict(list)
        starts: dict[str, list[float]] = defaultdict(list)
        idle: dict[str, list[float]] = defaultdict(list)
        for r in range(args.repeats):
            with closing(each_broker(tmp / f"r{r}")) as brokers:
                for broker in brokers:
                    starts[broker.kind].append(broker.ready_after)
                    idle[broker.kind].append(sum(rss_bytes(p) for p in broker.pids) / MIB)
                    here = tmp / f"r{r}" / f"work-{broker.kind}"
                    here.mkdir(parents=True)
                    for m, run in RUNS.items():
                        try:
                            x = run(broker, shared, here)
                        except (Exception, SystemExit) as exc:  # noqa: BLE001 - reported, run goes on
                            print(f"repeat {r + 1} {broker.kind} {m}: FAILS {exc!r}"[:500],
                                  flush=True)
                            x = Sample(math.nan, math.nan, math.nan, math.nan)
                        results[broker.kind, m].append(x)
                        print(f"repeat {r + 1} {broker.kind:5} {m:7} {x.rate:9,.0f} ev/s  "
                              f"broker CPU {x.cpu:6.2f} s over {x.seconds:5.1f} s, peak RSS "
                              f"{x.rss:6,.0f} MiB", flush=True)
        print(f"\nwall time {time.monotonic() - began:.0f} s\n")
        print(table(results, starts, idle))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Stream worker throughput beside its two peers, on the same events, same embedded broker.

* motcua: ``motcua streams`` (faust app, batches of 2,000 folded into the SQLite store in one
  transaction each), with signature verification on, then off;
* plain faust: group_by + Table counting received dossiers, per event (bench/peers);
* Quix Streams: the same fold and counters in Quix's stateful dataframe (bench/peers).

Each is timed from its first event to its last (start-up and group joins excluded), on
every record of a simulated period. motcua's counters are checked against the batch
recount at the end of each of its runs.

Run: ``.venv/bin/python -m bench.streams [DAYS] [SCALE]`` (default 7 days at scale 0.3).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

from bench.brokers import Usage
from infra.broker import EmbeddedBroker
from schemas.counters import CounterKey
from tests.streams_support import (
    WorkerProcess,
    produce,
    provision,
    simulate,
    store_view,
)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_worker(tmp: Path, bootstrap: str, prefix: str, keys: Path, total: int,
                 expected: dict[CounterKey, int], *args: str, usage: Usage | None = None,
                 env: dict[str, str] | None = None) -> tuple[float, bool, float]:
    """(seconds from the first event stored to the last, counters exact, peak RSS MiB) of a
    `motcua streams` process (``args`` its options, ``env`` added to its environment);
    ``usage``, if given, is started and stopped with that timed section."""
    w = WorkerProcess(tmp, bootstrap, prefix, keys, name=prefix.strip("."),
                      store_url=f"sqlite:///{tmp / (prefix.strip('.') + '.db')}", **(env or {}))
    w.start(*args)
    view = store_view(w.store_url, keys, prefix)
    first = end = 0.0
    try:
        while True:
            done = sum(o for (topic, _), (o, _) in view.positions().items()
                       if topic == prefix + "dossier-events")
            now = time.perf_counter()
            if done and not first:
                first = now
                if usage is not None:
                    usage.start()
            if done >= total:
                end = now
                if usage is not None:
                    usage.stop()
                break
            if not w.alive():
                raise SystemExit(w.output())
            time.sleep(0.05)
        exact = view.counters() == expected
        assert w.proc is not None
        rss = peak_rss_mib(w.proc.pid)
    finally:
        w.stop()
    return end - first, exact, rss


def restart_time(tmp: Path, bootstrap: str, prefix: str, keys: Path,
                 record: tuple[str, bytes, bytes]) -> float:
    """A worker started on an intact store (after kill -9 or a move): seconds from process
    start until one new record is folded. This is all a recovery costs here."""
    cfg = {"bootstrap_servers": [bootstrap]}
    ends = produce(cfg, prefix, [record])
    w = WorkerProcess(tmp, bootstrap, prefix, keys, name=prefix.strip("."),
                      store_url=f"sqlite:///{tmp / (prefix.strip('.') + '.db')}")
    view = store_view(w.store_url, keys, prefix)
    started = time.perf_counter()
    w.start()
    try:
        while any(view.positions().get(tp, (0, 0))[0] < end for tp, end in ends.items()):
            time.sleep(0.02)
        return time.perf_counter() - started
    finally:
        w.stop()


def timed_peer(module: str, bootstrap: str, topic: str, total: int, data: Path
               ) -> tuple[float, int]:
    """(seconds from the peer's first event to its last, events it saw). A peer that makes
    no progress for 30 s is stopped where it is and reported so."""
    proc = subprocess.Popen([sys.executable, "-m", module, bootstrap, topic, str(total),
                             str(data)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    last = {"events": 0, "seconds": 0.0}
    progress = time.monotonic()
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for x in proc.stdout or []:
            lines.put(x)
    threading.Thread(target=pump, daemon=True).start()
    try:
        while time.monotonic() - progress < 30:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if not line.startswith("{"):
                continue
            report = json.loads(line)
            if report["events"] > last["events"]:
                last, progress = report, time.monotonic()
            if report["done"]:
                break
        return float(last["seconds"]), int(last["events"])
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(days: int = 7, scale: float = 0.3) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        work = simulate(tmp / "sim", date(2025, 7, 1), date(2025, 7, days), scale=scale)
        records = [r for r in work.records if r[0] == "dossier-events"]
        expected = {k: v for k, v in work.expected().items() if not k[2].startswith("hotline")}
        total = len(records)
        print(f"{total:,} dossier events ({days} simulated days at scale {scale}), 12 "
              "partitions, embedded tansu broker, 2 cores", flush=True)
        rows: list[tuple[str, float, bool | None]] = []
        with EmbeddedBroker(log_path=tmp / "tansu.log") as broker:
            cfg = {"bootstrap_servers": [broker.bootstrap]}
            for prefix in ("v.", "nv.", "faust.", "quix."):
                provision(cfg, prefix)
                produce(cfg, prefix, records)
            secs, exact, rss = timed_worker(tmp, broker.bootstrap, "v.", work.keys_dir, total,
                                            expected)
            rows.append(("motcua streams, signatures verified", secs, exact))
            restart = restart_time(tmp, broker.bootstrap, "v.", work.keys_dir,
                                   ("dossier-events", b"D-EXTRA", records[0][2]))
            secs, exact, rss_nv = timed_worker(tmp, broker.bootstrap, "nv.", work.keys_dir,
                                               total, expected, "--no-verify")
            rows.append(("motcua streams --no-verify", secs, exact))
            for name, module, topic in (
                    ("peer: plain faust (group_by + Table, no fold)",
                     "bench.peers.faust_count", "faust.dossier-events"),
                    ("peer: Quix Streams, same fold and counters, no signatures",
                     "bench.peers.quix_count", "quix.dossier-events")):
                secs, events = timed_peer(module, broker.bootstrap, topic, total,
                                          tmp / module)
                if events < total:
                    name += f" (stalled at {events:,} of {total:,}; rate over those)"
                rows.append((name, secs * total / max(events, 1), None))
        print("| consumer | events/s | exact |\n|---|---:|---|")
        for name, secs, ok in rows:
            mark = "–" if ok is None else ("yes" if ok else "NO")
            print(f"| {name} | {total / secs:,.0f} | {mark} |")
        ours = {name: total / secs for name, secs, _ in rows}
        faust_rate, quix_rate = ours[rows[2][0]], ours[rows[3][0]]
        print(f"\nmotcua verified / plain faust: {ours[rows[0][0]] / faust_rate:.2f}×; "
              f"motcua --no-verify / Quix: {ours[rows[1][0]] / quix_rate:.2f}×")
        store = tmp / "v.db"
        dossiers = len({k for t, k, _ in records})
        year = 6_700 * 365 * total / dossiers  # events in a simulated year at this mix
        print(f"worker peak RSS: {rss:.0f} MiB verified, {rss_nv:.0f} MiB --no-verify "
              f"(cache of 100,000 folded dossiers; the rest is on disk)")
        print(f"store: {store.stat().st_size / 2**20:.1f} MiB for {dossiers:,} dossiers "
              f"= {store.stat().st_size / dossiers / 1024:.1f} KiB each")
        print(f"restart on an intact store (kill -9 or takeover), process start to the next "
              f"record folded: {restart:.1f} s")
        print(f"rebuild from an empty store, a simulated year (~{year / 1e6:.1f} M events) at "
              f"the verified rate: ~{year / ours[rows[0][0]] / 60:.0f} min (extrapolated)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7,
         float(sys.argv[2]) if len(sys.argv) > 2 else 0.3)

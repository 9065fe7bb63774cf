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
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from infra.broker import EmbeddedBroker
from schemas.counters import CounterKey
from tests.streams_support import (
    WorkerProcess,
    produce,
    provision,
    simulate,
    store_view,
)


def timed_worker(tmp: Path, bootstrap: str, prefix: str, keys: Path, total: int,
                 expected: dict[CounterKey, int], *args: str) -> tuple[float, bool]:
    w = WorkerProcess(tmp, bootstrap, prefix, keys, name=prefix.strip("."))
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
            if done >= total:
                end = now
                break
            if not w.alive():
                raise SystemExit(w.output())
            time.sleep(0.05)
        exact = view.counters() == expected
    finally:
        w.stop()
    return end - first, exact


def timed_peer(module: str, bootstrap: str, topic: str, total: int, data: Path) -> float:
    proc = subprocess.Popen([sys.executable, "-m", module, bootstrap, topic, str(total),
                             str(data)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                return float(json.loads(line)["seconds"])
        raise SystemExit(f"{module} exited without finishing")
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
            secs, exact = timed_worker(tmp, broker.bootstrap, "v.", work.keys_dir, total,
                                       expected)
            rows.append(("motcua streams, signatures verified", secs, exact))
            secs, exact = timed_worker(tmp, broker.bootstrap, "nv.", work.keys_dir, total,
                                       expected, "--no-verify")
            rows.append(("motcua streams --no-verify", secs, exact))
            rows.append(("peer: plain faust (group_by + Table, no fold)",
                         timed_peer("bench.peers.faust_count", broker.bootstrap,
                                    "faust.dossier-events", total, tmp / "faust"), None))
            rows.append(("peer: Quix Streams, same fold and counters, no signatures",
                         timed_peer("bench.peers.quix_count", broker.bootstrap,
                                    "quix.dossier-events", total, tmp / "quix"), None))
        print("| consumer | events/s | exact |\n|---|---:|---|")
        for name, secs, ok in rows:
            mark = "–" if ok is None else ("yes" if ok else "NO")
            print(f"| {name} | {total / secs:,.0f} | {mark} |")
        ours = {name: total / secs for name, secs, _ in rows}
        faust_rate = ours["peer: plain faust (group_by + Table, no fold)"]
        quix_rate = ours["peer: Quix Streams, same fold and counters, no signatures"]
        print(f"\nmotcua verified / plain faust: {ours[rows[0][0]] / faust_rate:.2f}×; "
              f"motcua --no-verify / Quix: {ours[rows[1][0]] / quix_rate:.2f}×")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7,
         float(sys.argv[2]) if len(sys.argv) > 2 else 0.3)

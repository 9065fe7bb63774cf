"""The July month at ``--speed max``: wall time and peak memory of ``motcua simulate``, then
an independent count of ``dossier.received`` on the topic, by channel.

Run: ``.venv/bin/python -m bench.simulate_july [--scale 1.0]`` (starts its own embedded
broker and a fresh store in a temporary folder; ~10 minutes at scale 1 on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from kafka import KafkaConsumer

from infra.broker import EmbeddedBroker
from schemas.codec import decode
from schemas.events import DossierReceived
from schemas.topics import DOSSIER_EVENTS


def count_received(bootstrap: str, want_events: int) -> tuple[Counter[str], int]:
    consumer = KafkaConsumer(DOSSIER_EVENTS, bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             fetch_max_bytes=50 * 1024 * 1024)
    counts: Counter[str] = Counter()
    seen = 0
    idle_since = time.monotonic()
    while seen < want_events and time.monotonic() - idle_since < 30:
        batches = consumer.poll(timeout_ms=1000, max_records=50_000)
        if batches:
            idle_since = time.monotonic()
        for records in batches.values():
            for record in records:
                seen += 1
                if b'"type":"dossier.received"' in record.value:
                    event = decode(record.value)
                    assert isinstance(event, DossierReceived)
                    counts[event.data.channel.value] += 1
    consumer.close()
    return counts, seen


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", default="1.0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(
            log_path=Path(tmp) / "tansu.log") as broker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOTCUA_")}
        env.update(MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap, MOTCUA_DATA_DIR=tmp)
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "infra.cli", "simulate", "--from", "2025-07-01", "--to",
             "2025-07-30", "--speed", "max", "--scale", args.scale, "--drain-timeout", "900"],
            env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        if result.returncode != 0:
            print(f"motcua simulate exited {result.returncode}:\n{result.stderr[-3000:]}\n"
                  f"{result.stdout[-3000:]}")
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        summary = json.loads(result.stdout)
        counted, seen = count_received(broker.bootstrap,
                                       summary["events_written"] - summary["hotline_calls"] * 2)
    rec = summary["received"]
    print(f"scale {args.scale}: {rec['total']:,} received, {rec['online']:,} online "
          f"({rec['online_rate']}), {summary['events_written']:,} events written, "
          f"{summary['events_published']:,} published")
    print(f"wall time {wall:.0f} s (simulator alone {summary['elapsed_s']:.0f} s, "
          f"{summary['events_per_s']:,} events/s), peak RSS {peak_mib:.0f} MiB")
    print(f"topic count: {seen:,} dossier events; dossier.received by channel: "
          f"{dict(counted)}; total {sum(counted.values()):,}")
    if summary["refused_operations"]:
        print(f"{summary['refused_operations']} operations refused, e.g. "
              f"{summary['refused_examples']}")
    agree = all(counted[c] == rec[c] for c in ("in_person", "online", "postal"))
    print("topic agrees with the summary" if agree else "MISMATCH between topic and summary")


if __name__ == "__main__":
    main()

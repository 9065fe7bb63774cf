"""One display server and many wall boards (issue 12): N concurrent SSE clients on
loopback, the latency from a snapshot on ``counters`` to the message at each client, the
server's memory per client and its CPU.

What runs: the embedded broker; ``motcua display`` as its own process (its RSS and CPU are
read from /proc); half the clients watch the province board, the others one commune board
each, spread over the 104. Each update publishes a province partial and every commune's
partial with ``received = k``; a client has the update when a ``change`` (or ``board``)
message shows ``"today": {"received": k``. The clients find that number with a bytes
search, not a JSON parse, so 1,000 of them in one asyncio loop do not become the
bottleneck they measure.

Peer (cited, not run): Grafana Live allows 100 simultaneous connections by default ("Set up
Grafana Live", Grafana documentation), and Grafana dashboards refresh at most every 5 s by
default (``min_refresh_interval = 5s``, Grafana's conf/defaults.ini).

Run: ``.venv/bin/python -m bench.display [CLIENTS] [UPDATES] [REPEATS]`` (default 1000, 30, 3).
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from kafka import KafkaProducer

from infra.broker import EmbeddedBroker, free_port
from schemas.nodes import all_nodes
from schemas.snapshot import Snapshot
from schemas.topics import COUNTERS
from tests.integration.test_broker import MOTCUA, cli_env
from tests.streams_support import provision

DAY = "2025-07-07"
MARK = b'"today": {"received": '
COMMUNES = [n.id for n in all_nodes() if not n.is_site]


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _records(k: int, offset: int) -> list[tuple[bytes, bytes]]:
    stamp = datetime.now(UTC).isoformat()
    snaps = [Snapshot("province", DAY, ("dossier-events", 0), offset, {"received": k},
                      "bench", stamp)]
    snaps += [Snapshot(f"commune:{c}", DAY, ("dossier-events", 0), offset,
                       {"received": k, "received.online": k}, "bench", stamp)
              for c in COMMUNES]
    return [(s.key.encode(), s.encode()) for s in snaps]


class Client:
    """One SSE connection; notes when each value of today's received first arrived."""

    def __init__(self, port: int, board: str) -> None:
        self.port = port
        self.board = board
        self.seen: dict[int, float] = {}
        self.connected = asyncio.Event()

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(f"GET /events?board={self.board} HTTP/1.1\r\nHost: bench\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                at = line.find(MARK)
                if at >= 0:
                    start = at + len(MARK)
                    end = start
                    while line[end:end + 1].isdigit():
                        end += 1
                    value = int(line[start:end])
                    self.seen.setdefault(value, time.perf_counter())
                    self.connected.set()
        finally:
            writer.close()


async def _round(port: int, clients: int, updates: int, producer: KafkaProducer, topic: str,
                 pid: int, repeat: int) -> dict[str, float]:
    boards = ["province" if i % 2 == 0 else f"commune/{COMMUNES[(i // 2) % len(COMMUNES)]}"
              for i in range(clients)]
    conns = [Client(port, b) for b in boards]
    rss_before = _rss_mib(pid)
    tasks = [asyncio.create_task(c.run()) for c in conns]
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in conns)), 120)
    connect_s = time.perf_counter() - started
    await asyncio.sleep(1.0)
    rss_after = _rss_mib(pid)
    sent: dict[int, float] = {}
    cpu0, wall0 = _cpu_s(pid), time.perf_counter()
    for k in range(1, updates + 1):
        # values and source positions only grow, across repeats too: a partial at a lower
        # position than the one held is (rightly) ignored by the boards
        value = 1000 * (repeat + 2) + k
        sent[value] = time.perf_counter()
        for key, body in _records(value, 1000 * (repeat + 1) + k):
            producer.send(topic, key=key, value=body)
        producer.flush(10)
        await asyncio.sleep(0.5)
    await asyncio.sleep(2.0)
    cpu = (_cpu_s(pid) - cpu0) / (time.perf_counter() - wall0)
    latencies = [(c.seen[v] - t) * 1000 for c in conns for v, t in sent.items() if v in c.seen]
    # a client that fell behind is sent the latest board: the values in between it never
    # sees (a board shows the present, not every step); counted, not a loss
    coalesced = sum(1 for c in conns for v in sent if v not in c.seen) / (len(conns) * len(sent))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    q = statistics.quantiles(latencies, n=100)
    return {"p50": q[49], "p99": q[98], "max": max(latencies), "coalesced": coalesced,
            "kib_per_client": (rss_after - rss_before) * 1024 / clients, "cpu": cpu,
            "connect_s": connect_s, "rss": rss_after}


def _wait_healthy(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the display server did not come up")
        time.sleep(0.2)


def main(clients: int = 1000, updates: int = 30, repeats: int = 3) -> None:
    _raise_fd_limit()
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedBroker(
            log_path=Path(tmp_name) / "tansu.log") as broker:
        cfg = {"bootstrap_servers": [broker.bootstrap]}
        prefix = "disp."
        provision(cfg, prefix)
        producer = KafkaProducer(**cfg, acks=1, linger_ms=0)
        topic = prefix + COUNTERS
        for key, body in _records(1000, 100):
            producer.send(topic, key=key, value=body)
        producer.flush(10)
        print(f"{clients:,} SSE clients (half on the province board, half on the 104 "
              f"commune boards), {updates} updates 2 a second (105 partials each), embedded "
              f"broker, a fresh display process per repeat, {repeats} repeats", flush=True)
        rows = []
        for r in range(repeats):
            port = free_port()
            log = (Path(tmp_name) / f"display{r}.log").open("wb")
            proc = subprocess.Popen([*MOTCUA, "display", "--port", str(port)], stdout=log,
                                    stderr=subprocess.STDOUT,
                                    env=cli_env(MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap,
                                                MOTCUA_TOPIC_PREFIX=prefix))
            try:
                _wait_healthy(port, proc)
                row = asyncio.run(_round(port, clients, updates, producer, topic, proc.pid, r))
            finally:
                proc.terminate()
                proc.wait(20)
                log.close()
            rows.append(row)
            print(f"repeat {r + 1}: p50 {row['p50']:.0f} ms, p99 {row['p99']:.0f} ms, "
                  f"max {row['max']:.0f} ms, coalesced {row['coalesced']:.1%}, "
                  f"{row['kib_per_client']:.1f} KiB/client, CPU {row['cpu']:.0%}, "
                  f"all connected in {row['connect_s']:.1f} s, RSS {row['rss']:.0f} MiB",
                  flush=True)
        producer.close(5)
    print("\n| measure | median | spread (min-max) |\n|---|---:|---:|")
    for name, measure, fmt in (("snapshot -> client p50, ms", "p50", "{:.0f}"),
                               ("snapshot -> client p99, ms", "p99", "{:.0f}"),
                               ("snapshot -> client max, ms", "max", "{:.0f}"),
                               ("updates a client saw only as a later value (coalesced)",
                                "coalesced", "{:.3f}"),
                               ("server memory per client, KiB", "kib_per_client", "{:.1f}"),
                               ("server CPU while updating (1.0 = one core)", "cpu", "{:.2f}"),
                               ("seconds until every client had its board", "connect_s",
                                "{:.1f}")):
        values = [row[measure] for row in rows]
        print(f"| {name} | {fmt.format(statistics.median(values))} | "
              f"{fmt.format(min(values))}-{fmt.format(max(values))} |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))

"""Both brokers for benchmarks run side by side: each kind in turn, and what its processes
cost while a section is measured.

* ``tansu``: the embedded broker (one process, memory storage);
* ``kafka``: a local Apache Kafka 4.1.1 KRaft cluster of 3 combined nodes (three JVMs, log
  on disk under a temporary directory), from the jars in ``var/kafka/lib``
  (``motcua kafka install``); topics made by ``infra.topics.ensure_topics`` there get
  replication factor 3 and ``min.insync.replicas`` 2.

``each_broker`` starts one broker, yields it, stops it, then the next: only the broker
being measured runs. ``Usage`` samples its processes over a measured section: CPU seconds
(``/proc/<pid>/stat`` utime + stime, every thread) and the summed resident set
(``/proc/<pid>/status`` VmRSS, sampled every 0.2 s: peak and mean).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infra.broker import EmbeddedBroker
from infra.kafka.cluster import KafkaCluster, installed
from infra.settings import group_env

REPO = Path(__file__).resolve().parents[1]
KAFKA_LIB = REPO / "var" / "kafka" / "lib"
KINDS = ("tansu", "kafka")
KAFKA_NODES = 3
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class RunningBroker:
    kind: str  # "tansu" | "kafka"
    bootstrap: str
    pids: tuple[int, ...]  # tansu's process, or the cluster's JVMs
    ready_after: float  # seconds from start until it answered (a cluster: all registered)

    @property
    def config(self) -> dict[str, list[str]]:
        """kafka-python's ``bootstrap_servers``."""
        return {"bootstrap_servers": self.bootstrap.split(",")}

    @property
    def group_env(self) -> dict[str, str]:
        """Consumer-group timing for child processes: tansu holds a join for half the session
        timeout (2000 ms is its floor); Apache Kafka refuses less than 6000 ms."""
        return group_env(self.kind)


@contextmanager
def running(kind: str, directory: Path) -> Iterator[RunningBroker]:
    """One broker of ``kind`` while the block runs; its files (log, cluster data) under
    ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if kind == "tansu":
        with EmbeddedBroker(log_path=directory / "tansu.log") as broker:
            yield RunningBroker(kind, broker.bootstrap, (broker.pid,), time.perf_counter() - t0)
    elif kind == "kafka":
        if not installed(KAFKA_LIB):
            raise SystemExit(f"no Apache Kafka jars in {KAFKA_LIB}: run `motcua kafka install`")
        with KafkaCluster(directory / "kafka", size=KAFKA_NODES, lib=KAFKA_LIB) as cluster:
            yield RunningBroker(kind, cluster.bootstrap, tuple(n.pid for n in cluster.nodes),
                                time.perf_counter() - t0)
    else:
        raise ValueError(f"unknown broker kind {kind!r}: {', '.join(KINDS)}")


def each_broker(directory: Path, kinds: Sequence[str] = KINDS
                ) -> Generator[RunningBroker, None, None]:
    """Each kind in turn, started fresh under ``directory/<n>-<kind>`` and stopped before the
    next starts. Close the generator (``contextlib.closing``) if the loop can break early."""
    for n, kind in enumerate(kinds):
        with running(kind, directory / f"{n}-{kind}") as broker:
            yield broker


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime: fields 14, 15


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Usage:
    """CPU seconds and RSS of a set of processes between ``start()`` and ``stop()`` (or as a
    context manager). A background thread samples the RSS sum every ``interval`` s."""

    def __init__(self, pids: Sequence[int], interval: float = 0.2) -> None:
        self.pids = tuple(pids)
        self.interval = interval
        self.cpu = 0.0  # seconds, all processes, over the section
        self.seconds = 0.0  # wall time of the section
        self.peak_rss = 0  # bytes, largest sampled sum
        self._samples: list[int] = []
        self._cpu0 = 0.0
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _cpu(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids)

    def _sample(self) -> None:
        total = sum(rss_bytes(p) for p in self.pids)
        self._samples.append(total)
        self.peak_rss = max(self.peak_rss, total)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> Usage:
        if self._thread is not None:
            return self  # started already (a hook may call it once more)
        self._sample()
        self._cpu0 = self._cpu()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> Usage:
        if self._thread is None or self._stop.is_set():
            return self
        self.cpu = self._cpu() - self._cpu0
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self._sample()
        return self

    @property
    def mean_rss(self) -> float:
        return sum(self._samples) / len(self._samples) if self._samples else 0.0

    @property
    def cpu_share(self) -> float:
        """CPU seconds per wall second (1.0 = one core busy)."""
        return self.cpu / self.seconds if self.seconds else 0.0

    def __enter__(self) -> Usage:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

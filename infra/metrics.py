"""What every long-running motcua process tells Prometheus, and its health endpoints.

One ``Metrics`` per process (relay, streams, sync, archive, display), labelled by ``process``
("streams", "sync-site-phohien", "archive-site-thaibinh", ...) so one dashboard serves a
whole deployment. ``serve`` answers on ``--metrics-port``:

- ``/metrics``: the Prometheus text format (prometheus-client);
- ``/healthz``: 200 while the process's loop is alive (it beat within ``stale_after``
  seconds), else 503 with the reason;
- ``/readyz``: 200 once it is caught up (its lag, from the fetch high watermark, is at most
  ``ready_lag_seconds``), else 503 with how far behind it is.

Platform code: no Settings here; the commands pass the port and thresholds.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from schemas.errors import MotcuaError

# a `_created` twin of every counter would only double the scrape
disable_created_metrics()  # type: ignore[no-untyped-call]

# Every metric a motcua process may export; infra/deploy's dashboard and alert rules use
# only these (tests/unit/test_deploy.py checks it).
METRIC_NAMES = (
    "motcua_events_in_total", "motcua_events_out_total", "motcua_dead_letters_total",
    "motcua_lag_events", "motcua_lag_seconds", "motcua_snapshot_age_seconds",
    "motcua_batch_duration_seconds", "motcua_commit_duration_seconds", "motcua_rss_bytes",
    "motcua_ready", "motcua_up", "motcua_origin_last_event_timestamp_seconds",
    "motcua_restarts_total", "motcua_outbox_waiting",
)

TROUBLE_SECONDS = 15.0  # not ready for this long after a Kafka connection error
# more records behind than this is not caught up, however fresh they are (a log published
# again after a restart holds old events with new timestamps)
READY_LAG_EVENTS = 20_000

# durations of a batch or a commit: from a few ms (a small SQLite batch) to tens of seconds
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _rss_bytes() -> float:
    """Resident set size now (Linux /proc), else the peak (ru_maxrss, KiB on Linux)."""
    try:
        with open("/proc/self/statm") as statm:
            return float(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class Metrics:
    """The metrics of one process. Readers call ``read``/``wrote``/``dead``/``lag``;
    ``beat`` says the loop is alive (health); ``ready`` is derived from the lag."""

    def __init__(self, process: str, *, ready_lag_seconds: float = 10.0,
                 stale_after: float = 60.0) -> None:
        self.process = process
        self.ready_lag_seconds = ready_lag_seconds
        self.stale_after = stale_after
        self.registry = CollectorRegistry()
        labels = ["process"]
        r = self.registry
        self.events_in = Counter("motcua_events_in", "records read (relay: outbox rows)",
                                 labels, registry=r).labels(process)
        self.events_out = Counter(
            "motcua_events_out", "records done: relay published, streams folded, sync "
            "applied, archive archived, display messages sent", labels,
            registry=r).labels(process)
        self._dead = Counter("motcua_dead_letters", "messages refused, by reason",
                             [*labels, "reason"], registry=r)
        self._lag_events = Gauge("motcua_lag_events", "records between the position and "
                                 "the fetch high watermark (relay: unpublished events)",
                                 labels, registry=r).labels(process)
        self._lag_seconds = Gauge("motcua_lag_seconds", "age of the oldest record not yet "
                                  "done (0 when caught up)", labels, registry=r).labels(process)
        self._snapshot_age = Gauge("motcua_snapshot_age_seconds", "since the last counters "
                                   "snapshot (streams: published; display: received; "
                                   "archive: checkpoint signed)", labels, registry=r)
        self.batch_seconds = Histogram("motcua_batch_duration_seconds", "one batch, read to "
                                       "committed", labels, buckets=_BUCKETS,
                                       registry=r).labels(process)
        self.commit_seconds = Histogram("motcua_commit_duration_seconds", "one database "
                                        "commit (or producer flush)", labels, buckets=_BUCKETS,
                                        registry=r).labels(process)
        Gauge("motcua_rss_bytes", "resident memory", labels,
              registry=r).labels(process).set_function(_rss_bytes)
        self._ready = Gauge("motcua_ready", "1 when caught up (see /readyz)", labels,
                            registry=r).labels(process)
        Gauge("motcua_up", "1 while the process's loop beats (see /healthz)", labels,
              registry=r).labels(process).set_function(lambda: float(self.alive()[0]))
        self._origin_seen = Gauge("motcua_origin_last_event_timestamp_seconds",
                                  "when an event of this origin was last read (Unix time)",
                                  [*labels, "origin"], registry=r)
        self._restarts = Counter("motcua_restarts", "children restarted by motcua up",
                                 [*labels, "child"], registry=r)
        self.outbox_waiting = Gauge("motcua_outbox_waiting", "events in the node stores' "
                                    "outboxes not yet published", labels,
                                    registry=r).labels(process)
        self._beat = time.monotonic()
        self._snapshot_at: float | None = None
        self._snapshot_age.labels(process).set_function(self.snapshot_age)
        self._lag: tuple[int, float] | None = None  # unknown until the first fetch
        self._ready.set_function(lambda: float(self.is_ready()[0]))
        self.server: MetricsServer | None = None  # set by ``serve``
        self._trouble: tuple[float, str] | None = None  # the last Kafka connection error
        self._error: tuple[float, str] | None = None  # the last failure of any kind

    # -- what readers report -------------------------------------------------------------
    def beat(self) -> None:
        """The loop went round: alive."""
        self._beat = time.monotonic()

    def read(self, n: int = 1) -> None:
        self.events_in.inc(n)
        self.beat()

    def wrote(self, n: int = 1) -> None:
        self.events_out.inc(n)

    def dead(self, reason: str, n: int = 1) -> None:
        # the reason's kind, not its text: a label per distinct message would explode
        self._dead.labels(self.process, reason_kind(reason)).inc(n)

    def lag(self, events: int, seconds: float) -> None:
        self._lag = (max(0, events), max(0.0, seconds))
        self._lag_events.set(self._lag[0])
        self._lag_seconds.set(self._lag[1])
        self.beat()

    def kafka_trouble(self, message: str) -> None:
        """A Kafka client logged a connection error (infra/logs.py): not ready for a
        while, since the lag it last measured may be stale."""
        self._trouble = (time.monotonic(), message)
        self.error(f"Kafka: {message}")

    def error(self, message: str) -> None:
        """A failure the process retries on its own (database down, a send refused):
        shown with its age by ``/status`` and ``motcua status``."""
        self._error = (time.monotonic(), message.splitlines()[0][:300] if message else "")

    def snapshot(self) -> None:
        self._snapshot_at = time.monotonic()

    def origin_seen(self, origin: str, at: float | None = None) -> None:
        self._origin_seen.labels(self.process, origin).set(at or time.time())

    def restarted(self, child: str) -> None:
        self._restarts.labels(self.process, child).inc()

    # -- what the endpoints say ----------------------------------------------------------
    def snapshot_age(self) -> float:
        return float("nan") if self._snapshot_at is None else (
            time.monotonic() - self._snapshot_at)

    def alive(self) -> tuple[bool, str]:
        quiet = time.monotonic() - self._beat
        if quiet > self.stale_after:
            return False, f"no loop beat for {quiet:.0f} s (limit {self.stale_after:.0f} s)"
        return True, "ok"

    def is_ready(self) -> tuple[bool, str]:
        alive, why = self.alive()
        if not alive:
            return False, why
        if self._trouble is not None and time.monotonic() - self._trouble[0] < TROUBLE_SECONDS:
            return False, f"Kafka unreachable: {self._trouble[1][:200]}"
        if self._lag is None:
            return False, "no fetch yet: lag unknown"
        events, seconds = self._lag
        if events and (seconds > self.ready_lag_seconds or events > READY_LAG_EVENTS):
            age = "age unknown" if seconds == float("inf") else f"{seconds:.0f} s"
            return False, (f"{events:,} records behind, {age} (ready at <= "
                           f"{self.ready_lag_seconds:g} s and {READY_LAG_EVENTS:,} records)")
        return True, f"caught up ({events:,} records, {seconds:.1f} s behind)"

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def status(self) -> dict[str, Any]:
        """``/status``: what ``motcua status`` shows beside the numbers."""
        alive, alive_why = self.alive()
        ready, ready_why = self.is_ready()
        error = None if self._error is None else {
            "message": self._error[1], "age_s": round(time.monotonic() - self._error[0], 1)}
        return {"process": self.process, "alive": alive, "alive_why": alive_why,
                "ready": ready, "ready_why": ready_why, "last_error": error}


def reason_kind(reason: str) -> str:
    """A dead letter's reason reduced to a stable label: its words before the first colon
    or digit (``"bad signature for origin 11977"`` -> ``"bad signature for origin"``)."""
    head = reason.split(":", 1)[0]
    words: list[str] = []
    for word in head.split():
        if any(c.isdigit() for c in word) or len(words) == 5:
            break
        words.append(word.lower())
    return " ".join(words) or "other"


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` of ``metrics`` on a daemon thread."""

    def __init__(self, metrics: Metrics, port: int, host: str = "127.0.0.1") -> None:
        handler = _handler(metrics)
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise MotcuaError(f"--metrics-port {port}: cannot listen on {host}:{port} "
                              f"({exc.strerror}); choose a free port") from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(metrics: Metrics) -> type[BaseHTTPRequestHandler]:
    routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics.text()),
        "/healthz": lambda: _verdict(metrics.alive()),
        "/readyz": lambda: _verdict(metrics.is_ready()),
        "/status": lambda: (200, "application/json",
                            json.dumps(metrics.status()).encode()),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?", 1)[0])
            status, kind, body = route() if route else (404, "text/plain", b"not found\n")
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:  # scrapes every 15 s: not worth a line
            return

    return Handler


def _verdict(result: tuple[bool, str]) -> tuple[int, str, bytes]:
    ok, why = result
    return (200 if ok else 503), "text/plain; charset=utf-8", (why + "\n").encode()


def serve(metrics: Metrics, port: int | None, host: str = "127.0.0.1") -> MetricsServer | None:
    """Start the endpoints when a port is given (``--metrics-port``), else nothing."""
    if port is not None:
        metrics.server = MetricsServer(metrics, port, host)
    return metrics.server

"""``motcua counters`` on a simulated July (issue 14): with no dates it shows the month of
the newest event counted, judges overdue and the late rate as of that event rather than at
the end of a range in the simulated future, and says when its figures are partial: CATCHING
UP while the stream worker is behind the topics, STALE when it publishes nothing."""

from __future__ import annotations

import json
import subprocess
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import decode
from schemas.counters import recount
from schemas.events import LOCAL_TZ
from schemas.snapshot import scope_figures
from schemas.topics import COUNTERS
from streams.reader import read_snapshots
from tests.conftest import Broker, unique_prefix
from tests.integration.test_broker import MOTCUA
from tests.integration.test_streams import wait_for_snapshots
from tests.streams_support import (
    WorkerProcess,
    Workload,
    produce,
    provision,
    simulate,
    store_view,
    wait_for_positions,
)
from tests.timing import budget


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    return simulate(tmp_path_factory.mktemp("fresh"), date(2025, 7, 1), date(2025, 7, 2),
                    scale=0.05)


def counters(worker: WorkerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*MOTCUA, "counters", *args], env=worker.env,
                            capture_output=True, text=True, timeout=budget(120))
    assert result.returncode == 0, result.stderr
    return result


def figures(worker: WorkerProcess, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(counters(worker, "--json", *args).stdout)
    return out


def test_defaults_as_of_and_freshness(tmp_path: Path, broker: Broker,
                                      kafka_config: dict[str, Any], workload: Workload) -> None:
    prefix = unique_prefix("cf")
    provision(kafka_config, prefix)
    half = len(workload.records) // 2
    first, rest = workload.records[:half], workload.records[half:]
    worker = WorkerProcess(tmp_path, broker.bootstrap, prefix, workload.keys_dir)
    try:
        ends = produce(kafka_config, prefix, first)
        worker.start()
        wait_for_positions(store_view(worker.store_url, workload.keys_dir, prefix), ends, 120,
                           worker)
        expected = recount([decode(v) for _, _, v in first])
        assert wait_for_snapshots(kafka_config, prefix, expected) == expected
        worker.stop()

        # no dates: the month of the newest event, July 2025, not today's month
        got = figures(worker)
        newest = max(decode(v).occurred_at for _, _, v in first)
        as_of = datetime.fromisoformat(got["as_of"])
        assert as_of.date() == newest.astimezone(LOCAL_TZ).date() and as_of <= newest
        assert (got["from"], got["to"]) == ("2025-07-01", as_of.date().isoformat())
        assert "newest event" in got["range_chosen"]
        assert got["received"] == sum(
            v for (scope, period, m), v in expected.items()
            if scope == "province" and period == "2025-07" and m == "received")
        assert (got["status"], got["behind"]) == ("live", 0)

        # a range reaching into the simulated future: stocks judged at the newest event
        month = figures(worker, "--from", "2025-07-01", "--to", "2025-07-31")
        assert month["stocks_as_of"] == as_of.date().isoformat()
        for key in ("in_progress", "paused", "overdue.in_progress", "overdue.paused",
                    "late_rate", "received"):
            assert month[key] == got[key], key
        naive = scope_figures(read_snapshots(kafka_config, prefix + COUNTERS), "province",
                              date(2025, 7, 1), date(2025, 7, 31)).as_dict()
        assert naive["overdue.in_progress"] > month["overdue.in_progress"]
        text = counters(worker, "--from", "2025-07-01", "--to", "2025-07-31").stdout
        assert f"at the end of {as_of.date()}" in text and "newest event counted" in text

        # more events while the worker is down: partial figures, said so
        produce(kafka_config, prefix, rest)
        behind = figures(worker, "--stale-after", "3600")
        assert (behind["status"], behind["behind"]) == ("catching_up", len(rest))
        assert counters(worker, "--stale-after", "3600").stdout.startswith("CATCHING UP: ")
        stale = figures(worker, "--stale-after", "0.01")
        assert stale["status"] == "stale" and "is `motcua streams` running" in (
            stale["status_reason"])
        assert counters(worker, "--stale-after", "0.01").stdout.startswith("STALE: ")

        worker.start()
        full = workload.expected()
        assert wait_for_snapshots(kafka_config, prefix, full, 120) == full
        done = figures(worker)
        assert (done["status"], done["behind"]) == ("live", 0)
    finally:
        worker.stop()

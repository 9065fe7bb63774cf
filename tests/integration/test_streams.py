"""The stream worker against a real broker: exact counters (a batch recount of the same
events by the same pure functions), on the counters topic and in its store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from schemas.topics import COUNTERS
from streams.reader import read_snapshots, totals
from tests.conftest import Broker
from tests.streams_support import (
    WorkerProcess,
    Workload,
    produce,
    provision,
    simulate,
    store_view,
    wait_for_positions,
)


@pytest.fixture(scope="session")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    """Three simulated days at 1/10 scale: ~2,000 dossiers, ~10,000 events, every
    lifecycle the simulator knows, signed by the nodes' own keys."""
    return simulate(tmp_path_factory.mktemp("workload"), date(2025, 7, 1), date(2025, 7, 3),
                    scale=0.1)


@pytest.fixture
def prefix(tmp_path: Path) -> str:
    return f"st{tmp_path.name[-8:].replace('_', '')}."


@pytest.fixture
def worker(tmp_path: Path, broker: Broker, prefix: str, workload: Workload
           ) -> Iterator[WorkerProcess]:
    w = WorkerProcess(tmp_path, broker.bootstrap, prefix, workload.keys_dir)
    yield w
    w.stop()


def wait_for_snapshots(kafka_config: dict[str, Any], prefix: str,
                       expected: dict[Any, int], timeout: float = 30.0) -> dict[Any, int]:
    import time
    deadline = time.monotonic() + timeout
    while True:
        got = totals(read_snapshots(kafka_config, prefix + COUNTERS))
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def test_counters_equal_a_batch_recount(kafka_config: dict[str, Any], prefix: str,
                                        workload: Workload, worker: WorkerProcess) -> None:
    provision(kafka_config, prefix)
    ends = produce(kafka_config, prefix, workload.records)
    worker.start()
    view = store_view(worker.store_url, workload.keys_dir, prefix)
    wait_for_positions(view, ends, 120, worker)
    expected = workload.expected()
    assert expected[("province", "2025-07", "received")] > 1000
    assert view.counters() == expected
    assert wait_for_snapshots(kafka_config, prefix, expected) == expected

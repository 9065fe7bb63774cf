"""Benchmarks; results and the commands behind them are in docs/benchmarks.md."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import date

from producers.service import DossierService


def receive_at_rate(service: DossierService, nodes: Sequence[str], seconds: float,
                    rate: float) -> tuple[dict[str, float], dict[str, float]]:
    """Receive dossiers at ``rate`` per second for ``seconds``, round-robin over ``nodes``,
    one committed transaction each. Returns, per dossier id, the ``perf_counter`` and the
    wall-clock time right after its commit."""
    committed: dict[str, float] = {}
    wall: dict[str, float] = {}
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds:
        pause = start + n / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        state = service.receive(nodes[n % len(nodes)], channel="online",
                                procedure_code="1.000001", field="Hộ tịch",
                                due_date=date(2027, 1, 1), components_digitised=True)
        committed[state.dossier_id] = time.perf_counter()
        wall[state.dossier_id] = time.time()
        n += 1
    return committed, wall

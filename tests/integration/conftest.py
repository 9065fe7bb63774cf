"""Fixtures the audit's test modules share."""

from __future__ import annotations

from datetime import date

import pytest

from tests.streams_support import Workload, simulate


@pytest.fixture(scope="session")
def day(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    """One simulated day at 1/20 scale: every lifecycle, ~2,000 events, 106 origins."""
    return simulate(tmp_path_factory.mktemp("auditday"), date(2025, 7, 1), date(2025, 7, 1),
                    scale=0.05)

"""``motcua simulate`` end to end: its JSON summary agrees with an independent count of what
reached the topic, and with the nodes' own stores; the workload is deterministic."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from infra.db import make_engine
from infra.node_tables import dossiers
from schemas.codec import decode
from schemas.events import DossierReceived
from schemas.topics import DOSSIER_EVENTS, HOTLINE_EVENTS
from tests.conftest import Broker, unique_prefix
from tests.integration.test_broker import MOTCUA, cli_env
from tests.integration.test_relay import read_all


def simulate(tmp: Path, *args: str, **env: str) -> dict[str, Any]:
    result = subprocess.run(
        [*MOTCUA, "simulate", "--from", "2025-07-01", "--to", "2025-07-02", "--seed", "5",
         "--speed", "max", *args],
        capture_output=True, text=True, timeout=300,
        env=cli_env(MOTCUA_DATA_DIR=str(tmp), **env))
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def test_summary_matches_the_topic_and_the_store(tmp_path: Path, broker: Broker,
                                                 kafka_config: dict[str, Any]) -> None:
    prefix = unique_prefix("s")
    summary = simulate(tmp_path, "--scale", "0.05", MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap,
                       MOTCUA_TOPIC_PREFIX=prefix)
    received = summary["received"]
    assert summary["events_published"] == summary["events_written"]
    assert summary["events_unpublished"] == 0 and summary["refused_operations"] == 0
    assert received["total"] == received["in_person"] + received["online"] + received["postal"]

    records = read_all(kafka_config, [prefix + DOSSIER_EVENTS, prefix + HOTLINE_EVENTS],
                       summary["events_written"])
    events = {e.event_id: e for e in (decode(r.value) for r in records)}
    assert len(events) == summary["events_written"]
    channels: Counter[str] = Counter()
    for event in events.values():
        if isinstance(event, DossierReceived):
            channels[event.data.channel.value] += 1
            channels["full_online"] += event.data.full_online
    assert dict(channels) == {k: received[k] for k in ("in_person", "online", "postal",
                                                       "full_online")}
    types = Counter(e.type for e in events.values())
    assert types["hotline.call_received"] == summary["hotline_calls"]

    engine = make_engine(f"sqlite:///{tmp_path / 'nodes.db'}")
    with engine.connect() as conn:
        by_status = {str(s): n for s, n in conn.execute(
            select(dossiers.c.status, func.count()).group_by(dossiers.c.status))}
    engine.dispose()
    assert by_status == summary["final_status"]
    assert sum(by_status.values()) == received["total"]


def test_the_workload_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    one = simulate(tmp_path / "a", "--scale", "0.02", "--no-relay")
    two = simulate(tmp_path / "b", "--scale", "0.02", "--no-relay")
    other = simulate(tmp_path / "c", "--scale", "0.02", "--no-relay", "--seed", "6")
    keys = ("received", "received_by_node", "final_status", "operations", "hotline_calls")
    assert {k: one[k] for k in keys} == {k: two[k] for k in keys}
    assert one["received_by_node"] != other["received_by_node"]


def test_bad_arguments_are_one_line(tmp_path: Path) -> None:
    for args, words in ((["--speed", "fast"], "use a number"),
                        (["--from", "2025-13-01"], "is not a date"),
                        (["--from", "2025-07-05", "--to", "2025-07-01"], "before --from"),
                        (["--scale", "0"], "argument --scale: 0: give a number above 0")):
        result = subprocess.run([*MOTCUA, "simulate", "--no-relay", *args],
                                capture_output=True, text=True, timeout=60,
                                env=cli_env(MOTCUA_DATA_DIR=str(tmp_path)))
        assert result.returncode == 2, (args, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr

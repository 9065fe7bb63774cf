"""Topic provisioning on the session broker, and ``motcua up`` end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka.admin import KafkaAdminClient
from sqlalchemy import select, update

from consumers.audit.store import Archive
from infra.broker import free_port, kafka_answers
from infra.node_tables import outbox
from producers import store
from producers.migrate import open_store
from schemas.codec import decode
from schemas.integrity import verify
from schemas.keys import load_registry
from schemas.topics import DOSSIER_EVENTS, REGISTRY, topic_specs
from tests.conftest import Broker
from tests.factories import Chain
from tests.integration.test_broker import MOTCUA, cli_env
from tests.integration.test_relay import read_all
from tests.timing import Deadline, LineReader, budget, poll_until


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOTCUA, *args], capture_output=True, text=True,
                          timeout=budget(60), env=cli_env(**env))


def test_topics_create_twice_says_created_then_exists(broker: Broker,
                                                      kafka_config: dict[str, Any]) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}."
    env = {"MOTCUA_KAFKA_BOOTSTRAP": broker.bootstrap, "MOTCUA_TOPIC_PREFIX": prefix}
    first = run_cli("topics", "create", **env)
    second = run_cli("topics", "create", **env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    for spec in REGISTRY:
        assert f"topic {prefix}{spec.name}: created" in first.stdout
        assert f"topic {prefix}{spec.name}: exists" in second.stdout
    n = len(REGISTRY)
    assert f"{n} created, 0 already existed" in first.stdout
    assert f"0 created, {n} already existed; nothing changed" in second.stdout

    admin = KafkaAdminClient(**kafka_config)
    try:
        found = {t["name"]: len(t["partitions"]) for t in
                 admin.describe_topics([s.name for s in topic_specs(prefix)])}
    finally:
        admin.close()
    assert found == {s.name: s.partitions for s in topic_specs(prefix)}

    listing = run_cli("topics", "list", **env)
    assert listing.returncode == 0
    assert f"{prefix}dossier-events" in listing.stdout and "missing" not in listing.stdout


def test_unreachable_cluster_is_one_line_not_a_traceback() -> None:
    port = free_port()
    started = time.monotonic()
    result = run_cli("topics", "create", MOTCUA_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}",
                     MOTCUA_KAFKA_BOOTSTRAP_TIMEOUT_MS="1500")
    took = time.monotonic() - started
    # 1.5 s to give up, then one line: 10 s on an unloaded machine, scaled
    assert took < budget(10), f"the error came after {took:.1f} s (budget {budget(10):.1f} s)"
    assert result.returncode == 2
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def test_motcua_up_runs_the_system_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """Broker, topics, keys, store, relay and simulator: dossiers reach the topic, signed
    by their nodes; Ctrl-C stops it all, the broker included."""
    port = free_port()
    web = free_port()
    proc = subprocess.Popen([*MOTCUA, "up", "--port", str(port), "--speed", "max",
                             "--scale", "0.01"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env=cli_env(MOTCUA_DATA_DIR=str(tmp_path / "var"),
                                        MOTCUA_DISPLAY_PORT=str(web)))
    try:
        reader = LineReader(proc.stdout)  # read on a thread: no readline blocks past a deadline
        lines = reader.until("motcua is up", 20, "motcua up to say it is up")
        assert lines[-1].startswith("motcua is up"), "\n".join(lines)
        assert lines[0].startswith(f"bootstrap=127.0.0.1:{port}")
        assert sum(": created" in line for line in lines) == len(REGISTRY)
        assert len(list((tmp_path / "var" / "keys").glob("*.key"))) == 106
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}")
        assert {s.name for s in REGISTRY} <= set(admin.list_topics())
        admin.close()
        records = read_all({"bootstrap_servers": [f"127.0.0.1:{port}"]}, [DOSSIER_EVENTS], 500)
        assert len(records) >= 500, "the simulator's events did not reach the topic"
        registry = load_registry(tmp_path / "var" / "keys")
        for record in records[:50]:
            verify(decode(record.value), registry)

        # the stream worker's province figures move while the simulator runs
        def received() -> int:
            out = run_cli("counters", "--from", "2025-07-01", "--to", "2025-07-30", "--json",
                          MOTCUA_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}")
            assert out.returncode == 0, out.stderr
            return int(json.loads(out.stdout)["received"])
        deadline = Deadline(60, "counters published, then moving")
        first = 0
        while first == 0 and not deadline.expired():
            first = received()
        assert first > 0, deadline.message("no counters published")
        later = first
        while later == first and not deadline.expired():
            time.sleep(1)
            later = received()
        assert later > first, deadline.message("province totals did not move")
        worker_pid = int(re.search(r"streams: worker pid (\d+)",  # type: ignore[union-attr]
                                   "\n".join(lines)).group(1))

        # the wall boards: `up` prints where, and the province board climbs with July
        url = f"http://127.0.0.1:{web}/board/province"
        shown = next(line for line in lines if line.startswith("display: "))
        assert shown.startswith(f"display: wall boards at {url} (pid ")
        display_pid = int(re.search(r"pid (\d+)", shown).group(1))  # type: ignore[union-attr]
        assert httpx.get(url, timeout=budget(10)).status_code == 200

        def on_board() -> int:
            board = httpx.get(f"http://127.0.0.1:{web}/api/board?board=province",
                              timeout=budget(10)).json()
            return int(board["month"]["received"])
        # at scale 0.01 the simulator may be done by now, so the board is checked against
        # `motcua counters` (the same topic), not for a climb it may have finished
        deadline = Deadline(60, "the board to show what motcua counters prints")
        board, printed = on_board(), received()
        while (board == 0 or board != printed) and not deadline.expired():
            time.sleep(0.5)
            board, printed = on_board(), received()
        assert 0 < board == printed, deadline.message(f"board {board}, motcua counters "
                                                      f"{printed}")

        # every replica fills while the simulator runs; `sync status` reads them and the log
        def replicas() -> dict[str, int]:
            out = run_cli("sync", "status", "--json",
                          MOTCUA_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}",
                          MOTCUA_DATA_DIR=str(tmp_path / "var"))
            assert out.returncode == 0, out.stderr
            return {r["node"]: int(r.get("dossiers", 0)) for r in json.loads(out.stdout)}
        communes = ("11977", "12424", "11953")  # at scale 0.01 one may have none yet

        def filled(rows: dict[str, int]) -> bool:
            return rows["site-phohien"] > 0 and rows["site-thaibinh"] > 0 and any(
                rows[c] for c in communes)
        deadline = Deadline(60, "every replica to fill")
        rows = replicas()
        while not filled(rows) and not deadline.expired():
            time.sleep(1)
            rows = replicas()
        assert set(rows) == {"site-phohien", "site-thaibinh", *communes}
        assert filled(rows), deadline.message(str(rows))
        assert all(rows["site-phohien"] > rows[c] for c in communes), rows  # only its own
        sync_pids = [int(p) for p in re.findall(r"pid (\d+)", next(
            line for line in lines if line.startswith("sync: ")))]
        assert len(sync_pids) == 5

        # the audit archive fills too, from the same log
        shown = next(line for line in lines if line.startswith("archive: "))
        archive_pid = int(re.search(r"pid (\d+)", shown).group(1))  # type: ignore[union-attr]
        def archived() -> int:
            if not (tmp_path / "var" / "archive" / "index.db").exists():
                return 0
            archive = Archive.reader(tmp_path / "var" / "archive")
            try:
                return int(archive.counts()[0])
            finally:
                archive.close()
        poll_until(archived, 60, "the archive to hold something (it stayed empty)",
                   interval=0.5)

        said_up = len(reader.lines)
        worker_pid = _supervision(tmp_path / "var", port, worker_pid, reader)

        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=budget(60))  # every child stops in turn
        reader.rest(10, "motcua up's output to end")
        rest = "\n".join(reader.lines[said_up:])
    finally:
        proc.kill()
    assert proc.returncode == 0, rest
    assert "SIGINT received; stopping" in rest and rest.rstrip().endswith("stopped")
    assert "Traceback" not in rest
    assert not kafka_answers("127.0.0.1", port), "the broker outlived motcua up"
    for pid in [worker_pid, display_pid, archive_pid, *sync_pids]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the worker, display, archive and sync consumers went with it


def _status(data_dir: Path) -> dict[str, Any]:
    out = run_cli("status", "--json", MOTCUA_DATA_DIR=str(data_dir))
    assert out.returncode in (0, 1), out.stderr
    return dict(json.loads(out.stdout))


def _supervision(data_dir: Path, port: int, worker_pid: int, reader: LineReader) -> int:
    """Issue 14: every process `up` runs serves its metrics and shows in `motcua status`;
    a worker killed with -9 is started again, and says so. Returns the new worker's pid."""
    state = _status(data_dir)
    rows = {r["name"]: r for r in state["processes"]}
    assert {"streams", "display", "archive", "archive-site-thaibinh", "sync-site-phohien",
            "sync-11977"} <= set(rows), rows.keys()
    for name, row in rows.items():
        assert row["running"], (name, row)
        body = httpx.get(f"http://127.0.0.1:{row['metrics_port']}/metrics",
                         timeout=budget(10)).text
        assert "motcua_events_in_total" in body and "motcua_lag_events" in body, name
        assert httpx.get(f"http://127.0.0.1:{row['metrics_port']}/healthz",
                         timeout=budget(10)).status_code == 200, name
    up = rows["up (relay, simulator)"]
    assert up["metrics"]["motcua_events_out_total"] > 0, up  # the relay published
    assert rows["streams"]["pid"] == worker_pid and rows["streams"]["restarts"] == 0

    os.kill(worker_pid, signal.SIGKILL)
    poll_until(lambda: reader.seen("streams: started again"), 60,
               "up to say the killed worker started again", interval=0.5,
               detail=reader.text)
    assert reader.seen("streams: EXITED with status -9"), reader.text()
    deadline = Deadline(90, "the restarted worker to catch up")
    while True:
        row = {r["name"]: r for r in _status(data_dir)["processes"]}["streams"]
        if (row["running"] and row.get("ready")) or deadline.expired():
            break
        time.sleep(1)
    assert row["restarts"] == 1 and row["pid"] != worker_pid and row["running"], row
    assert row.get("ready"), deadline.message(f"never ready: {row}")
    return int(row["pid"])


def test_motcua_up_stops_with_an_error_when_its_broker_dies(tmp_path: Path) -> None:
    proc = subprocess.Popen([*MOTCUA, "up", "--port", str(free_port()), "--no-simulate"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cli_env(MOTCUA_DATA_DIR=str(tmp_path / "var"),
                                        MOTCUA_DISPLAY_PORT=str(free_port())))
    try:
        reader = LineReader(proc.stdout)
        first = reader.line(20, "motcua up's first line (the broker's pid)")
        pid = int(re.search(r"pid (\d+)", first).group(1))  # type: ignore[union-attr]
        reader.until("motcua is up", 20, "motcua up to say it is up")
        os.kill(pid, signal.SIGKILL)
        proc.wait(budget(30))
        rest = reader.rest(10, "motcua up's last words")
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "error: the embedded broker exited" in rest


def test_republish_all_marks_every_stored_event_unpublished(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'nodes.db'}")
    chain = Chain("11977")
    with engine.begin() as conn:
        for _ in range(3):
            store.append(conn, chain.emit("dossier.resolved"), "dossier-events")
        conn.execute(update(outbox).values(published_at=datetime.now(UTC), kafka_partition=0,
                                           kafka_offset=1))
    assert store.republish_all(engine) == 3
    with engine.connect() as conn:
        rows = conn.execute(select(outbox.c.published_at, outbox.c.kafka_offset)).all()
    assert rows == [(None, None)] * 3
    assert store.republish_all(engine) == 0

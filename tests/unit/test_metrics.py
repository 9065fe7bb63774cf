"""infra/metrics.py over real HTTP, and the supervisor of `motcua up` with real processes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infra.broker import free_port
from infra.cli.ops import read_state
from infra.cli.supervise import Supervisor, last_line
from infra.metrics import METRIC_NAMES, Metrics, MetricsServer, reason_kind
from infra.settings import load_settings
from schemas.errors import MotcuaError


@pytest.fixture
def served() -> Iterator[tuple[Metrics, str]]:
    metrics = Metrics("sync-11977", ready_lag_seconds=5, stale_after=0.5)
    server = MetricsServer(metrics, free_port())
    yield metrics, f"http://127.0.0.1:{server.port}"
    server.close()


def test_metrics_endpoint_exports_every_declared_name(served: tuple[Metrics, str]) -> None:
    metrics, url = served
    metrics.read(3)
    metrics.wrote(2)
    metrics.dead("bad signature for origin 11977: does not verify")
    metrics.lag(7, 1.5)
    metrics.batch_seconds.observe(0.2)
    metrics.commit_seconds.observe(0.01)
    metrics.origin_seen("11977")
    metrics.restarted("streams")
    response = httpx.get(url + "/metrics", timeout=5)
    assert response.status_code == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(response.text) for s in f.samples}
    names = {name for name, _ in samples}
    for name in METRIC_NAMES:  # a histogram shows as _bucket/_sum/_count
        assert name in names or f"{name}_count" in names, name
    proc = (("process", "sync-11977"),)
    assert samples[("motcua_events_in_total", proc)] == 3
    assert samples[("motcua_events_out_total", proc)] == 2
    assert samples[("motcua_lag_events", proc)] == 7
    assert samples[("motcua_dead_letters_total",
                    (("process", "sync-11977"), ("reason", "bad signature for origin")))] == 1
    assert samples[("motcua_rss_bytes", proc)] > 10_000_000  # a Python process: > 10 MB


def test_readyz_follows_the_lag_and_healthz_the_loop(served: tuple[Metrics, str]) -> None:
    metrics, url = served
    metrics.beat()
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200
    first = httpx.get(url + "/readyz", timeout=5)
    assert first.status_code == 503 and "lag unknown" in first.text  # no fetch yet
    metrics.lag(5000, 30.0)
    behind = httpx.get(url + "/readyz", timeout=5)
    assert behind.status_code == 503 and "5,000 records behind" in behind.text
    metrics.lag(5000, 2.0)  # behind in records, but only 2 s: within the 5 s allowed
    assert httpx.get(url + "/readyz", timeout=5).status_code == 200
    metrics.lag(0, 0.0)
    assert httpx.get(url + "/readyz", timeout=5).status_code == 200
    time.sleep(0.7)  # no beat for longer than stale_after: neither alive nor ready
    dead = httpx.get(url + "/healthz", timeout=5)
    assert dead.status_code == 503 and "no loop beat" in dead.text
    assert httpx.get(url + "/readyz", timeout=5).status_code == 503
    assert httpx.get(url + "/nothing", timeout=5).status_code == 404


def test_a_taken_port_is_one_clear_error(served: tuple[Metrics, str]) -> None:
    metrics, url = served
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(MotcuaError, match=f"--metrics-port {port}: cannot listen"):
        MetricsServer(metrics, port)


@pytest.mark.parametrize(("reason", "kind"), [
    ("bad signature for origin 11977: x", "bad signature for origin"),
    ("not JSON: Expecting value", "not json"),
    ("fork: 12424 seq 5 already holds another event", "fork"),
    ("", "other"),
])
def test_reason_kind_keeps_labels_few(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind


def test_a_dying_child_is_started_again_with_growing_backoff(tmp_path: Path) -> None:
    """A child that exits at once (here: `motcua nodes` refuses --metrics-port, exit 2) is
    said to have died with its status and its log's last line, started again after 1 s,
    then 2 s; `motcua status`'s file records it."""
    settings = load_settings(data_dir=tmp_path, metrics_port=free_port())
    said: list[str] = []
    sup = Supervisor(settings, "127.0.0.1:1", said.append)
    child = sup.start("crashy", ["nodes"])
    deadline = time.monotonic() + 30
    while child.restarts < 2 and time.monotonic() < deadline:
        sup.check()
        time.sleep(0.1)
    sup.stop_all()
    exits = [line for line in said if "EXITED" in line]
    assert exits[0].startswith("crashy: EXITED with status 2")
    assert "unrecognized arguments: --metrics-port" in exits[0]  # the log's last line
    assert "starting it again in 1 s" in exits[0] and "starting it again in 2 s" in exits[1]
    again = [line for line in said if "started again" in line]
    assert again[0].startswith("crashy: started again, pid ") and "(restart 1)" in again[0]
    assert "(restart 2)" in again[1]
    state = read_state(settings)
    row = next(p for p in state["processes"] if p["name"] == "crashy")
    assert row["restarts"] == 2 and row["last_exit"] == 2
    assert json.loads((tmp_path / "run" / "up.json").read_text()) == state
    assert last_line(tmp_path / "nothing.log") == "no log"


def test_status_of_a_deployment_from_its_targets_file(
        tmp_path: Path, served: tuple[Metrics, str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`motcua status --targets FILE` (systemd, compose: no `up` state file) asks each
    target; one that does not answer is DOWN and makes the exit status 1."""
    from infra.cli.main import main

    metrics, url = served
    metrics.lag(0, 0.0)
    dead_port = free_port()
    targets = tmp_path / "targets.yml"
    targets.write_text(f'- labels: {{unit: motcua-sync}}\n  targets: ["{url[7:]}", '
                       f'"127.0.0.1:{dead_port}"]\n')
    monkeypatch.setenv("MOTCUA_DATA_DIR", str(tmp_path))
    assert main(["status", "--targets", str(targets), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)["processes"]
    assert [r["running"] for r in rows] == [True, False]
    assert rows[0]["name"] == f"sync-11977 ({url[7:]})" and rows[0]["ready"] is True
    assert rows[0]["metrics"]["motcua_lag_events"] == 0
    assert main(["status", "--targets", str(targets)]) == 1
    text = capsys.readouterr().out
    assert "sync-11977" in text and "DOWN" in text and "ready" in text
    targets.write_text("not: [a, targets, file")
    assert main(["status", "--targets", str(targets)]) == 2
    assert "not a Prometheus targets file" in capsys.readouterr().err
    assert main(["status"]) == 2  # no `up` ran with this data folder
    assert f"no `motcua up` has run with the data folder {tmp_path}" in capsys.readouterr().err

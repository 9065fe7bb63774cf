"""The local Apache Kafka as an operator meets it: ``motcua kafka install``, ``motcua kafka
up`` and ``motcua up --broker kafka``. They run once, not per session broker: each starts
its own cluster from the jars that ``make test`` installed in var/kafka/lib."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from infra.broker import free_port, kafka_answers
from infra.kafka.cluster import KafkaCluster
from schemas.topics import DOSSIER_EVENTS, REGISTRY
from tests.conftest import kafka_lib
from tests.integration.test_broker import MOTCUA, cli_env
from tests.integration.test_relay import read_all
from tests.timing import Deadline, LineReader, budget


def data_dir_with_jars(tmp_path: Path) -> Path:
    """A fresh MOTCUA_DATA_DIR whose kafka/lib is the installed jars (no second fetch)."""
    data = tmp_path / "var"
    (data / "kafka").mkdir(parents=True)
    (data / "kafka" / "lib").symlink_to(kafka_lib())
    return data


def started(cmd: list[str], env: dict[str, str], done: str, seconds: float
            ) -> tuple[subprocess.Popen[str], LineReader, list[str]]:
    """``cmd`` started, its output read on a thread up to the first line that contains
    ``done`` (within ``budget(seconds)``: a silent child cannot hold the read past it)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    try:
        reader = LineReader(proc.stdout)
        return proc, reader, reader.until(done, seconds)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def stopped(proc: subprocess.Popen[str], reader: LineReader, seconds: float) -> str:
    """What ``proc`` says from here until it exits, within ``budget(seconds)``."""
    proc.wait(budget(seconds))
    return reader.rest(10, "the output to end")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_install_without_java_or_maven_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run([*MOTCUA, "kafka", "install"], capture_output=True, text=True,
                            timeout=budget(60), env=cli_env(PATH=str(tmp_path),
                                                    MOTCUA_DATA_DIR=str(tmp_path / "v")))
    assert result.returncode == 2
    assert result.stderr.startswith("motcua kafka: error: `java` not found: install a Java")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_install_keeps_the_jars(tmp_path: Path) -> None:
    result = subprocess.run([*MOTCUA, "kafka", "install"], capture_output=True, text=True,
                            timeout=budget(60), env=cli_env(MOTCUA_DATA_DIR=str(
                                data_dir_with_jars(tmp_path))))
    assert result.returncode == 0, result.stderr
    assert "jars kept in" in result.stdout


def test_kafka_up_without_jars_says_what_to_run(tmp_path: Path) -> None:
    result = subprocess.run([*MOTCUA, "kafka", "up", "--brokers", "1"], capture_output=True,
                            text=True, timeout=budget(60),
                            env=cli_env(MOTCUA_DATA_DIR=str(tmp_path / "v")))
    assert result.returncode == 2
    assert "run `motcua kafka install`" in result.stderr and "Traceback" not in result.stderr


def test_kafka_up_prints_bootstrap_and_nodes_keeps_its_log_and_stops_on_ctrl_c(
        tmp_path: Path) -> None:
    data = data_dir_with_jars(tmp_path)
    port = KafkaCluster.free_port_block(2)
    env = cli_env(MOTCUA_DATA_DIR=str(data))
    cmd = [*MOTCUA, "kafka", "up", "--brokers", "2", "--port", str(port)]

    def up() -> tuple[subprocess.Popen[str], LineReader, list[str]]:
        return started(cmd, env, "Ctrl-C stops every node", 120)

    proc, reader, lines = up()
    try:
        assert lines[0] == f"bootstrap=127.0.0.1:{port},127.0.0.1:{port + 1}", lines
        nodes = [re.fullmatch(r"node (\d): 127\.0\.0\.1:(\d+) pid (\d+) log (\S+)", line)
                 for line in lines[1:3]]
        assert all(nodes), lines
        pids = [int(m.group(3)) for m in nodes if m]
        assert all(Path(m.group(4)).is_file() for m in nodes if m)
        admin = KafkaAdminClient(bootstrap_servers=[f"127.0.0.1:{port}"])
        admin.create_topics([NewTopic("kept", 2, 2)])
        assert len(admin.describe_cluster()["brokers"]) == 2
        admin.close()
        proc.send_signal(signal.SIGINT)
        rest = stopped(proc, reader, 60)
    finally:
        proc.kill()
    assert proc.returncode == 0, rest
    assert "SIGINT received; stopping" in rest and rest.rstrip().endswith("stopped")
    assert all(gone(pid) for pid in pids), "a Kafka node outlived motcua kafka up"
    assert not kafka_answers("127.0.0.1", port)

    # the log is on disk: the same directory starts again with the topic in it
    proc, reader, lines = up()
    try:
        admin = KafkaAdminClient(bootstrap_servers=[f"127.0.0.1:{port}"])
        assert "kept" in admin.list_topics()
        admin.close()
        proc.send_signal(signal.SIGTERM)
        stopped(proc, reader, 60)
    finally:
        proc.kill()
    assert proc.returncode == 0

    # another size on the same directory is refused in one line
    other = subprocess.run([*MOTCUA, "kafka", "up", "--brokers", "3", "--port", str(port)],
                           capture_output=True, text=True, timeout=budget(60), env=env)
    assert other.returncode == 2
    assert "holds a 2-node cluster: use --brokers 2" in other.stderr
    assert "Traceback" not in other.stderr


def test_up_on_kafka_runs_the_system_and_keeps_the_log_across_restarts(tmp_path: Path
                                                                        ) -> None:
    """``motcua up --broker kafka``: the cluster, topics replicated min(3, N) ways, relay,
    simulator, worker and replicas; Ctrl-C stops it all. Started again, the log is still
    there: nothing is published again and the worker goes on from its positions."""
    data = data_dir_with_jars(tmp_path)
    port = KafkaCluster.free_port_block(2)
    env = cli_env(MOTCUA_DATA_DIR=str(data), MOTCUA_KAFKA_BROKERS="2",
                  MOTCUA_SYNC_NODES="site-phohien", MOTCUA_DISPLAY_PORT=str(free_port()))
    bootstrap = f"127.0.0.1:{port},127.0.0.1:{port + 1}"
    config: dict[str, Any] = {"bootstrap_servers": bootstrap.split(",")}

    def up(*extra: str) -> tuple[subprocess.Popen[str], LineReader, list[str]]:
        return started([*MOTCUA, "up", "--broker", "kafka", "--port", str(port), *extra], env,
                       "motcua is up", 180)

    def counters() -> dict[str, Any]:
        out = subprocess.run([*MOTCUA, "counters", "--from", "2025-07-01", "--to",
                              "2025-07-30", "--json"], capture_output=True, text=True,
                             timeout=budget(90),
                             env={**env, "MOTCUA_KAFKA_BOOTSTRAP": bootstrap})
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    proc, reader, lines = up("--speed", "max", "--scale", "0.01")
    try:
        assert any(line.startswith(f"bootstrap={bootstrap}") for line in lines), lines
        assert sum(": created" in line for line in lines) == len(REGISTRY)
        admin = KafkaAdminClient(**config)
        described = admin.describe_topics([DOSSIER_EVENTS])[0]
        admin.close()
        assert {len(p["replica_nodes"]) for p in described["partitions"]} == {2}
        records = read_all(config, [DOSSIER_EVENTS], 500)
        assert len(records) >= 500
        deadline = Deadline(120, "counters published")
        while counters()["received"] == 0 and not deadline.expired():
            time.sleep(1)
        assert counters()["received"] > 0, deadline.message("no counters published")
        pids = [int(p) for p in re.findall(r"pid (\d+)", "\n".join(lines))]
        received, logged = counters()["received"], log_size(config)
        proc.send_signal(signal.SIGINT)
        rest = stopped(proc, reader, 90)
    finally:
        proc.kill()
    assert proc.returncode == 0, rest
    assert "Traceback" not in rest and rest.rstrip().endswith("stopped")
    assert all(gone(pid) for pid in pids), "a process outlived motcua up"

    proc, reader, lines = up("--no-simulate")
    try:
        assert not any("published again" in line for line in lines), lines
        assert not any("store emptied" in line for line in lines), lines
        assert log_size(config) >= logged, "the log did not survive the restart"
        deadline = Deadline(120, f"the restarted worker to count {received} again")
        while counters()["received"] < received and not deadline.expired():
            time.sleep(1)
        assert counters()["received"] >= received, deadline.message()
        proc.send_signal(signal.SIGINT)
        rest = stopped(proc, reader, 90)
    finally:
        proc.kill()
    assert proc.returncode == 0, rest


def log_size(config: dict[str, Any]) -> int:
    """Records on dossier-events (end offsets: right on Apache Kafka, docs/kafka.md)."""
    consumer = KafkaConsumer(**config)
    try:
        tps = [TopicPartition(DOSSIER_EVENTS, p)
               for p in consumer.partitions_for_topic(DOSSIER_EVENTS) or ()]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()

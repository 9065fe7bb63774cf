"""A local Apache Kafka cluster in KRaft mode, run from the jars that ``motcua kafka install``
copies into ``var/kafka/lib`` (resolved from Maven by ``infra/kafka/pom.xml``).

Every node is a combined broker + controller on 127.0.0.1 with three listeners:
``CLIENT`` (what motcua connects to: PLAINTEXT, SASL_PLAINTEXT, SSL or SASL_SSL),
``INTERNAL`` (PLAINTEXT, replication between nodes, and how this module checks readiness)
and ``CONTROLLER`` (the KRaft quorum). Ports: ``port + i`` for clients, ``port + 100 + i``
internal, ``port + 200 + i`` controller, for node ``i`` = 0..N-1. Storage is on disk under
``directory``, so a cluster stopped and started again keeps its log.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from infra.broker import BrokerError, die_with_parent, free_port, kafka_answers, port_in_use

KAFKA_VERSION = "4.1.1"
POM = Path(__file__).with_name("pom.xml")
HOST = "127.0.0.1"


class KafkaClusterError(BrokerError):
    """The local Apache Kafka cannot be installed, formatted, started or reached."""


def lib_dir(data_dir: Path) -> Path:
    return data_dir / "kafka" / "lib"


def installed(lib: Path) -> bool:
    return (lib / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()


def _need(tool: str, what: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise KafkaClusterError(f"`{tool}` not found: {what}")
    return path


def java() -> str:
    return _need("java", "install a Java 17+ runtime (Debian: apt-get install "
                         "openjdk-17-jre-headless)")


def install(data_dir: Path, say: Callable[[str], None] = print) -> Path:
    """Resolve Apache Kafka's jars with Maven and copy them into ``data_dir/kafka/lib``.
    Kept jars are not fetched again; Maven's own cache (~/.m2) serves a second clone."""
    lib = lib_dir(data_dir)
    if installed(lib):
        say(f"Apache Kafka {KAFKA_VERSION}: jars kept in {lib}")
        return lib
    java()
    mvn = _need("mvn", "install Maven (Debian: apt-get install maven) to fetch Apache "
                       "Kafka's jars")
    say(f"Apache Kafka {KAFKA_VERSION}: resolving jars with Maven into {lib} ...")
    started = time.monotonic()
    result = subprocess.run(
        [mvn, "-B", "-q", "-f", str(POM), "package", f"-Dlib.dir={lib.resolve()}",
         f"-Dkafka.version={KAFKA_VERSION}"],
        capture_output=True, text=True, check=False)
    if result.returncode != 0 or not installed(lib):
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise KafkaClusterError(f"mvn could not fetch Apache Kafka's jars (exit "
                                f"{result.returncode}):\n{tail}")
    # mvn writes target/ beside the pom: nothing there is needed
    shutil.rmtree(POM.parent / "target", ignore_errors=True)
    say(f"Apache Kafka {KAFKA_VERSION}: {len(list(lib.glob('*.jar')))} jars in {lib} "
        f"({time.monotonic() - started:.0f} s)")
    return lib


@dataclass(frozen=True)
class Security:
    """How clients reach the CLIENT listener. SCRAM users are written into the storage at
    format time (KRaft has no ZooKeeper to add them to later)."""

    protocol: str = "PLAINTEXT"  # PLAINTEXT | SASL_PLAINTEXT | SSL | SASL_SSL
    scram_users: dict[str, str] = field(default_factory=dict)  # SCRAM-SHA-512 name -> password
    keystore_pem: Path | None = None  # private key (PKCS#8, unencrypted) + certificate chain
    # CA certificate(s) of the clients: given, every client must present a certificate
    # signed by one of them (ssl.client.auth=required)
    truststore_pem: Path | None = None

    def listener_configs(self) -> dict[str, str]:
        conf: dict[str, str] = {}
        prefix = "listener.name.client."
        if self.protocol.startswith("SASL"):
            conf[prefix + "sasl.enabled.mechanisms"] = "SCRAM-SHA-512"
            conf[prefix + "scram-sha-512.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;")
        if self.protocol.endswith("SSL"):
            if self.keystore_pem is None:
                raise KafkaClusterError(f"{self.protocol} needs a PEM keystore")
            conf[prefix + "ssl.keystore.type"] = "PEM"
            conf[prefix + "ssl.keystore.location"] = str(self.keystore_pem)
            if self.truststore_pem is not None:
                conf[prefix + "ssl.truststore.type"] = "PEM"
                conf[prefix + "ssl.truststore.location"] = str(self.truststore_pem)
                conf[prefix + "ssl.client.auth"] = "required"
        return conf


class KafkaNode:
    """One combined broker + controller process."""

    def __init__(self, cluster: KafkaCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.node_id = index + 1
        self.port = cluster.port + index
        self.internal_port = cluster.port + 100 + index
        self.controller_port = cluster.port + 200 + index
        self.dir = cluster.directory / f"node-{self.node_id}"
        self.log_path = self.dir / "server.log"
        self.config_path = self.dir / "server.properties"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise KafkaClusterError(f"node {self.node_id} is not running")
        return self._proc.pid

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def write_config(self) -> None:
        c = self.cluster
        voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in c.nodes)
        rf = min(3, c.size)
        conf = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"CLIENT://{HOST}:{self.port},INTERNAL://{HOST}:{self.internal_port},"
                         f"CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"CLIENT://{HOST}:{self.port},"
                                    f"INTERNAL://{HOST}:{self.internal_port}",
            "listener.security.protocol.map": f"CLIENT:{c.security.protocol},"
                                              "INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "INTERNAL",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.dir / "data"),
            "default.replication.factor": str(rf),
            "min.insync.replicas": str(min(2, rf)),
            "offsets.topic.replication.factor": str(rf),
            # fewer internal partitions than the defaults (50): a 2-core machine creates
            # them on the first group join and the first transaction
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(min(2, rf)),
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(min(2, rf)),
            # a group's first join is not held 3 s for more members (tests, up)
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "unclean.leader.election.enable": "false",
            # topics are created by motcua (or faust) with their configs, never by a typo
            "auto.create.topics.enable": "false",
            # the log cleaner wakes often enough for a test to watch compaction happen
            "log.cleaner.backoff.ms": "1000",
            **c.security.listener_configs(),
            **c.extra_configs,
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in conf.items()))

    def format(self, cluster_id: str) -> None:
        """kafka-storage format, with the SCRAM users if any (idempotent: skipped if the
        log directory is formatted already)."""
        if (self.dir / "data" / "meta.properties").exists():
            return
        cmd = [*self.cluster.java_cmd(), "kafka.tools.StorageTool", "format", "-t",
               cluster_id, "-c", str(self.config_path)]
        for name, password in self.cluster.security.scram_users.items():
            cmd += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-5:])
            raise KafkaClusterError(f"formatting node {self.node_id} failed:\n{tail}")

    def start(self) -> None:
        if self.running():
            return
        for port in (self.port, self.internal_port, self.controller_port):
            if port_in_use(HOST, port):
                raise KafkaClusterError(f"port {port} on {HOST} is already in use (another "
                                        "cluster?); pick another with --port")
        self._log = open(self.log_path, "ab")  # closed in kill() / wait()
        # own session: Ctrl-C reaches motcua, which stops the nodes in order; the
        # parent-death signal ends a node if motcua is killed and cannot
        self._proc = subprocess.Popen(
            [*self.cluster.java_cmd(heap=True), "kafka.Kafka", str(self.config_path)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=die_with_parent)

    def answers(self) -> bool:
        return self.running() and kafka_answers(HOST, self.internal_port, timeout=0.5)

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        """kill -9, as a crash would; the node's files stay for a restart."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._close_log()

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def terminate(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)  # a paused JVM cannot act on SIGTERM
            self._proc.terminate()

    def wait(self, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        try:
            proc.wait(max(timeout, 0.01))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._close_log()
        return proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class KafkaCluster:
    """N combined KRaft nodes on 127.0.0.1. Use as a context manager, or start()/stop()."""

    def __init__(self, directory: Path, size: int = 3, *, port: int = 0,
                 lib: Path | None = None, heap_mb: int = 512,
                 security: Security | None = None,
                 extra_configs: dict[str, str] | None = None) -> None:
        if not 1 <= size <= 9:
            raise KafkaClusterError(f"--brokers {size}: a local cluster has 1 to 9 nodes")
        self.directory = directory.resolve()
        self.size = size
        self.lib = (lib or lib_dir(Path("var"))).resolve()
        self.heap_mb = heap_mb
        self.security = security or Security()
        self.extra_configs = dict(extra_configs or {})
        self.port = port or self.free_port_block(size)
        self.nodes = [KafkaNode(self, i) for i in range(size)]

    @staticmethod
    def free_port_block(size: int) -> int:
        """A base port whose client, internal and controller ports (base, base + 100 and
        base + 200, ``size`` of each) are all free: ``free_port`` checks the whole span."""
        try:
            return free_port(HOST, span=200 + size)
        except OSError as exc:
            raise KafkaClusterError(f"no free block of ports: {exc}") from None

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    @property
    def internal_bootstrap(self) -> str:
        """PLAINTEXT addresses, for admin work that bypasses the client listener's auth."""
        return ",".join(f"{HOST}:{n.internal_port}" for n in self.nodes)

    def java_cmd(self, heap: bool = False) -> list[str]:
        if not installed(self.lib):
            raise KafkaClusterError(f"Apache Kafka's jars are not in {self.lib}: run "
                                    "`motcua kafka install` (needs java and mvn)")
        cmd = [java()]
        if heap:
            cmd += [f"-Xms{min(256, self.heap_mb)}m", f"-Xmx{self.heap_mb}m", "-XX:+UseG1GC",
                    "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true"]
        log4j = self.directory / "log4j2.properties"
        return [*cmd, f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{self.lib}/*"]

    def _write_log4j(self) -> None:
        (self.directory / "log4j2.properties").write_text(
            "status = warn\n"
            "appender.out.type = Console\nappender.out.name = OUT\n"
            "appender.out.layout.type = PatternLayout\n"
            "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\nrootLogger.appenderRef.out.ref = OUT\n"
            "logger.state.name = state.change.logger\nlogger.state.level = WARN\n"
            "logger.req.name = kafka.request.logger\nlogger.req.level = WARN\n")

    def _cluster_id(self) -> str:
        """The id kept in ``cluster.json``; a directory made for another size is refused."""
        meta = self.directory / "cluster.json"
        if meta.exists():
            saved = json.loads(meta.read_text())
            if saved["size"] != self.size:
                raise KafkaClusterError(
                    f"{self.directory} holds a {saved['size']}-node cluster: use --brokers "
                    f"{saved['size']}, or another --dir (or remove it to start afresh)")
            return str(saved["cluster_id"])
        cluster_id = "-"
        while cluster_id.startswith("-"):  # the storage tool would read it as an option
            # (Kafka's own Uuid.randomUuid() skips these too; 1 id in 64 began with "-")
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        meta.write_text(json.dumps({"cluster_id": cluster_id, "size": self.size}) + "\n")
        return cluster_id

    def start(self, timeout: float = 90.0) -> KafkaCluster:
        self.directory.mkdir(parents=True, exist_ok=True)
        cluster_id = self._cluster_id()
        self._write_log4j()
        try:
            for node in self.nodes:
                node.write_config()
                node.format(cluster_id)
            for node in self.nodes:
                node.start()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 90.0, nodes: Iterable[KafkaNode] | None = None
                   ) -> None:
        """Until every node (or those given) answers and sees all N brokers registered."""
        wanted = list(nodes or self.nodes)
        deadline = time.monotonic() + timeout
        while True:
            for node in wanted:
                if node._proc is not None and node._proc.poll() is not None:
                    raise KafkaClusterError(
                        f"Kafka node {node.node_id} exited with status "
                        f"{node._proc.returncode} while starting; see {node.log_path}")
            if all(n.answers() for n in wanted) and self._registered() == self.size:
                return
            if time.monotonic() > deadline:
                raise KafkaClusterError(f"the Kafka cluster was not ready within {timeout:.0f}"
                                        f" s; see the logs under {self.directory}")
            time.sleep(0.25)

    def _registered(self) -> int:
        """Brokers in the cluster metadata, as one node's INTERNAL listener tells it."""
        from kafka.admin import KafkaAdminClient
        from kafka.errors import KafkaError

        live = [n for n in self.nodes if n.running()]
        if not live:
            return 0
        try:
            admin = KafkaAdminClient(bootstrap_servers=[f"{HOST}:{live[0].internal_port}"],
                                     request_timeout_ms=3000, bootstrap_timeout_ms=3000)
        except KafkaError:
            return 0
        try:
            brokers = admin.describe_cluster()["brokers"]
            return sum(not b.get("is_fenced") for b in brokers)
        except KafkaError:
            return 0
        finally:
            admin.close()

    def pause(self) -> None:
        """SIGSTOP every node: an outage where connections stay open and nothing answers."""
        for node in self.nodes:
            node.pause()

    def resume(self) -> None:
        for node in self.nodes:
            node.resume()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every node (a controlled shutdown), SIGKILL what is left after
        ``timeout``; waits for every exit so the ports are free."""
        for node in self.nodes:
            node.terminate()
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            node.wait(deadline - time.monotonic())

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

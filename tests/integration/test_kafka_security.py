"""SASL and TLS against a real Apache Kafka (a local 1-node KRaft cluster per protocol):
every motcua process reaches it through the MOTCUA_KAFKA_* settings alone, and a client
with a wrong password or without the CA is told so in one line.

Clusters (the CLIENT listener; replication and readiness use a PLAINTEXT one):
  SASL_PLAINTEXT  SCRAM-SHA-512 users made at format time
  SSL             a CA made here signs the broker's certificate (SAN IP 127.0.0.1) and the
                  client's: the broker requires a client certificate (mutual TLS)
  SASL_SSL        TLS checked against the CA, then SCRAM-SHA-512
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from consumers.sync.replica import Replica
from infra.db import make_engine
from infra.kafka.cluster import KafkaCluster, Security
from infra.settings import SettingsError, load_settings, ssl_context
from producers.store import count_unpublished
from schemas.snapshot import totals
from schemas.topics import COUNTERS, REGISTRY
from streams.reader import read_snapshots
from tests.conftest import broker_kinds, kafka_lib, unique_prefix
from tests.integration.test_broker import MOTCUA, cli_env
from tests.streams_support import (
    CliProcess,
    WorkerProcess,
    Workload,
    published_ends,
    simulate,
    store_view,
)
from tests.sync_support import SyncProcess, node_calls, node_rows, wait_applied

USER, PASSWORD = "motcua", "s3cret-Pa55"
SASL = ["SASL_PLAINTEXT", "SASL_SSL"]
TLS = ["SSL", "SASL_SSL"]
ALL = ["SASL_PLAINTEXT", "SSL", "SASL_SSL"]
# Apache Kafka refuses a group session timeout below 6 s (group.min.session.timeout.ms)
GROUP_ENV = {"MOTCUA_GROUP_SESSION_TIMEOUT_MS": "6000",
             "MOTCUA_GROUP_HEARTBEAT_INTERVAL_MS": "1500"}


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA's certificate: the clients' MOTCUA_KAFKA_SSL_CAFILE, the broker's truststore
    keystore: Path  # the broker's: key (PKCS#8, unencrypted), certificate, CA certificate
    client_cert: Path
    client_key: Path


def make_pki(directory: Path) -> Pki:
    """A CA, a broker certificate for 127.0.0.1 and a client certificate, all signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def builder(subject: str, issuer: x509.Name, key: rsa.RSAPrivateKey
                ) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=2)))

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (builder("motcua test CA", name("motcua test CA"), ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(
              digital_signature=True, key_cert_sign=True, crl_sign=True,
              content_commitment=False, key_encipherment=False, data_encipherment=False,
              key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(subject: str, usage: x509.ObjectIdentifier,
             san: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = builder(subject, ca.subject, key).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False)
        if san:
            cert = cert.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return (key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
                cert.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))

    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    server_key, server_cert = leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
                                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key, client_cert = leaf(USER, ExtendedKeyUsageOID.CLIENT_AUTH, [])
    pki = Pki(directory / "ca.pem", directory / "broker.pem", directory / "client.crt",
              directory / "client.key")
    pki.ca.write_bytes(ca_pem)
    pki.keystore.write_bytes(server_key + server_cert + ca_pem)
    pki.client_cert.write_bytes(client_cert)
    pki.client_key.write_bytes(client_key)
    for path in (pki.keystore, pki.client_key):
        path.chmod(0o600)
    return pki


@dataclass
class Secured:
    """A running cluster and what a motcua process needs to reach its CLIENT listener."""

    protocol: str
    cluster: KafkaCluster
    env: dict[str, str]  # MOTCUA_KAFKA_* (all but the bootstrap) and the group timing
    pki: Pki | None

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    def cli_env(self, prefix: str, **extra: str) -> dict[str, str]:
        return cli_env(MOTCUA_KAFKA_BOOTSTRAP=self.bootstrap, MOTCUA_TOPIC_PREFIX=prefix,
                       **{**self.env, **extra})

    def kafka_config(self) -> dict[str, Any]:
        """kafka-python settings, made by Settings from the same values (for the test's own
        reads)."""
        values = {k.removeprefix("MOTCUA_").lower(): v for k, v in self.env.items()
                  if k.startswith("MOTCUA_KAFKA_")}
        return load_settings(kafka_bootstrap=self.bootstrap, **values).kafka_config()


@pytest.fixture(scope="module")
def secured(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Secured]:
    """One cluster per protocol (tests name theirs with an indirect parametrize)."""
    protocol: str = request.param
    if broker_kinds(request.config) == ["tansu"]:
        pytest.skip("MOTCUA_TEST_BROKER=tansu: these tests need the local Apache Kafka "
                    "(SASL/TLS listeners); tansu has neither")
    base = tmp_path_factory.mktemp(f"kafka-{protocol.lower()}")
    env = {"MOTCUA_KAFKA_SECURITY_PROTOCOL": protocol, **GROUP_ENV}
    pki = make_pki(base / "pki") if protocol.endswith("SSL") else None
    if protocol.startswith("SASL"):
        env.update(MOTCUA_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
                   MOTCUA_KAFKA_SASL_USERNAME=USER, MOTCUA_KAFKA_SASL_PASSWORD=PASSWORD)
    if pki is not None:
        env["MOTCUA_KAFKA_SSL_CAFILE"] = str(pki.ca)
    if protocol == "SSL":
        assert pki is not None
        env.update(MOTCUA_KAFKA_SSL_CERTFILE=str(pki.client_cert),
                   MOTCUA_KAFKA_SSL_KEYFILE=str(pki.client_key))
    security = Security(
        protocol=protocol,
        scram_users={USER: PASSWORD} if protocol.startswith("SASL") else {},
        keystore_pem=pki.keystore if pki else None,
        truststore_pem=pki.ca if pki and protocol == "SSL" else None)  # SSL: mutual TLS
    with KafkaCluster(base / "cluster", 1, lib=kafka_lib(), security=security) as cluster:
        yield Secured(protocol, cluster, env, pki)


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    """1/7 at 1/20 scale (~340 dossiers, ~950 events, hotline calls), signed, in the
    outbox of a node store that each test copies and relays."""
    return simulate(tmp_path_factory.mktemp("workload"), date(2025, 7, 1), date(2025, 7, 1),
                    scale=0.05)


def prefix_for(tmp_path: Path) -> str:
    return unique_prefix("sec")


def wait_for(predicate: Any, timeout: float, what: str, *procs: CliProcess) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for proc in procs:
            if not proc.alive():
                raise AssertionError(f"{proc.log.name} exited while waiting for {what}:\n"
                                     f"{proc.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.25)


def run_cli(env: dict[str, str], *args: str, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOTCUA, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error as the user sees it: exit status 2, one line on stderr, no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("secured", ALL, indirect=True)
def test_every_process_reaches_the_cluster_through_the_settings(
        secured: Secured, workload: Workload, tmp_path: Path) -> None:
    """topics create, the relay (kafka-python producer), a stream worker (faust/aiokafka)
    and a site's sync (kafka-python consumer), each a `motcua` process given only the
    MOTCUA_KAFKA_* settings, carry a simulated day from a node store to exact counters and
    a complete replica; `sync status` and `counters` read the cluster the same way."""
    prefix = prefix_for(tmp_path)
    env = secured.cli_env(prefix)

    created = run_cli(env, "topics", "create")
    assert created.returncode == 0, created.stderr
    assert f"topics: {len(REGISTRY)} created, 0 already existed" in created.stdout, \
        created.stdout

    store = f"sqlite:///{tmp_path / 'nodes.db'}"
    shutil.copy(workload.keys_dir.parent / "nodes.db", tmp_path / "nodes.db")
    db = f"sqlite:///{tmp_path}/{{node}}.db"
    replica = Replica.open(make_engine(db.format(node="site-phohien")), "site-phohien")
    worker = WorkerProcess(tmp_path, secured.bootstrap, prefix, workload.keys_dir,
                           **secured.env)
    sync = SyncProcess(tmp_path, secured.bootstrap, prefix, workload.keys_dir,
                       "site-phohien", db, **secured.env)
    relay = CliProcess(tmp_path / "relay.log", {**env, "MOTCUA_DB_URL": store})
    engine = make_engine(store)
    try:
        worker.start()
        sync.start()
        relay.run("relay", "--all")
        wait_for(lambda: count_unpublished(engine) == 0, 120,
                 "the relay to publish the outbox", relay)
        relay.stop()
        assert relay.proc is not None and relay.proc.returncode == 0, relay.output()
        ends = published_ends(engine, prefix)
        assert sum(ends.values()) == len(workload.records)

        view = store_view(worker.store_url, workload.keys_dir, prefix)
        wait_for(lambda: all(view.positions().get(tp, (0, 0))[0] >= end
                             for tp, end in ends.items()),
                 180, "the stream worker to store every record", worker)
        wait_applied(replica, ends, 180, sync.gone)
        expected = workload.expected()
        assert expected[("province", "2025-07", "received")] > 300
        assert view.counters() == expected

        config = secured.kafka_config()
        deadline = time.monotonic() + 60
        while totals(read_snapshots(config, prefix + COUNTERS)) != expected:
            assert time.monotonic() < deadline, "the counters topic never matched the store"
            time.sleep(0.5)
    finally:
        relay.stop()
        worker.stop()
        sync.stop()
        engine.dispose()

    assert replica.rows() == node_rows(store) and len(replica.rows()) > 300
    assert replica.call_rows() == node_calls(store)
    assert replica.status()["stored"] == len(workload.records)
    assert replica.gaps() == {}

    status = run_cli(env, "sync", "status", "--node", "site-phohien", "--db", db, "--json")
    assert status.returncode == 0, status.stderr
    assert '"events_behind": 0' in status.stdout, status.stdout

    counters = run_cli(env, "counters", "--from", "2025-07-01", "--to", "2025-07-01",
                       "--json")
    assert counters.returncode == 0, counters.stderr
    received = expected[("province", "2025-07-01", "received")]
    assert f'"received": {received},' in counters.stdout, counters.stdout


@pytest.mark.parametrize("command", [("topics", "create"), ("sync", "--node", "site-phohien"),
                                     ("streams",), ("relay", "--all")],
                         ids=["topics", "sync", "streams", "relay"])
@pytest.mark.parametrize("secured", SASL, indirect=True)
def test_a_wrong_password_is_one_clear_line(secured: Secured, workload: Workload,
                                            tmp_path: Path, command: tuple[str, ...]) -> None:
    env = secured.cli_env(prefix_for(tmp_path), MOTCUA_KAFKA_SASL_PASSWORD="not-the-password",
                          MOTCUA_KAFKA_BOOTSTRAP_TIMEOUT_MS="2000",
                          MOTCUA_KEYS_DIR=str(workload.keys_dir),
                          MOTCUA_DATA_DIR=str(tmp_path / "data"))
    started = time.monotonic()
    line = one_line(run_cli(env, *command))
    assert line == (
        f"motcua {command[0]}: error: Kafka at {secured.bootstrap} refused the credentials "
        f"of user '{USER}' (SASL SCRAM-SHA-512): Authentication failed during authentication "
        "due to invalid credentials with SASL mechanism SCRAM-SHA-512")
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("secured", TLS, indirect=True)
def test_a_tls_client_without_the_ca_file_is_one_clear_line(secured: Secured, tmp_path: Path
                                                              ) -> None:
    env = secured.cli_env(prefix_for(tmp_path), MOTCUA_KAFKA_BOOTSTRAP_TIMEOUT_MS="2000")
    del env["MOTCUA_KAFKA_SSL_CAFILE"]
    line = one_line(run_cli(env, "topics", "create"))
    assert line == (
        f"motcua topics: error: Kafka at {secured.bootstrap} presented a TLS certificate "
        "this client does not trust (self-signed certificate in certificate chain); set "
        "MOTCUA_KAFKA_SSL_CAFILE to the PEM file of the CA that signed it")

    env["MOTCUA_KAFKA_SSL_CAFILE"] = str(tmp_path / "no-such-ca.pem")
    line = one_line(run_cli(env, "topics", "create"))
    assert line == (f"motcua topics: error: MOTCUA_KAFKA_SSL_CAFILE={tmp_path}/no-such-ca.pem"
                    ": not usable for TLS (No such file or directory)")


@pytest.mark.parametrize("secured", ["SSL"], indirect=True)
def test_mutual_tls_without_a_good_client_certificate_is_one_clear_line(
        secured: Secured, tmp_path: Path) -> None:
    env = secured.cli_env(prefix_for(tmp_path), MOTCUA_KAFKA_BOOTSTRAP_TIMEOUT_MS="2000")
    del env["MOTCUA_KAFKA_SSL_CERTFILE"], env["MOTCUA_KAFKA_SSL_KEYFILE"]
    line = one_line(run_cli(env, "topics", "create"))
    assert line == (f"motcua topics: error: Kafka at {secured.bootstrap} wants a client "
                    "certificate (SSLV3_ALERT_BAD_CERTIFICATE): set "
                    "MOTCUA_KAFKA_SSL_CERTFILE (and _KEYFILE)")

    stranger = make_pki(tmp_path / "other-ca")  # a client certificate the broker's CA never signed
    env.update(MOTCUA_KAFKA_SSL_CERTFILE=str(stranger.client_cert),
               MOTCUA_KAFKA_SSL_KEYFILE=str(stranger.client_key))
    line = one_line(run_cli(env, "topics", "create"))
    assert line.startswith(f"motcua topics: error: Kafka at {secured.bootstrap} refused the "
                           f"client certificate MOTCUA_KAFKA_SSL_CERTFILE="
                           f"{stranger.client_cert} ("), line


def test_tls_files_that_cannot_be_used_name_their_variable(tmp_path: Path) -> None:
    """No cluster needed: the stream worker's TLS context and the probe's are built here."""
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")
    assert ssl_context(pki.ca, pki.client_cert, pki.client_key) is not None
    with pytest.raises(SettingsError, match=r"^MOTCUA_KAFKA_SSL_CAFILE=/nowhere/ca\.pem: not "
                                            r"usable for TLS \(No such file or directory\)$"):
        ssl_context("/nowhere/ca.pem")
    with pytest.raises(SettingsError, match=r"^MOTCUA_KAFKA_SSL_CERTFILE / _KEYFILE=.*client"
                                            r"\.crt, .*client\.key: not usable for TLS"):
        ssl_context(pki.ca, pki.client_cert, other.client_key)  # a key of another cert
    with pytest.raises(SettingsError, match="MOTCUA_KAFKA_SSL_KEYFILE is set without "
                                            "MOTCUA_KAFKA_SSL_CERTFILE"):
        ssl_context(pki.ca, None, pki.client_key)
    settings = load_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=pki.ca)
    assert settings.ssl_context().check_hostname

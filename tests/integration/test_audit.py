"""The audit archive (consumers/audit, issue 13) on a real broker: every valid event once,
garbage, forgeries, forks and redeliveries refused or dropped, across a kill -9 of the
archive process; and on disk: a crash between writing a segment and committing the index
leaves no torn segment."""

from __future__ import annotations

import gzip
import time
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from nacl.signing import SigningKey

from consumers.audit.store import Accepted, Archive, _append_at, segment_path
from schemas.codec import decode, encode
from schemas.integrity import seal
from schemas.keys import Keyring
from tests.conftest import Broker, unique_prefix
from tests.factories import Chain
from tests.integration.test_broker import cli_env
from tests.streams_support import CliProcess, Workload, produce, provision, simulate


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Workload:
    """One simulated day at 1/20 scale: every lifecycle, ~2,000 events, 106 origins."""
    return simulate(tmp_path_factory.mktemp("auditday"), date(2025, 7, 1), date(2025, 7, 1),
                    scale=0.05)


def archiver(tmp: Path, broker: Broker, prefix: str, keys: Path) -> CliProcess:
    return CliProcess(tmp / "archive.log", cli_env(
        MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap, MOTCUA_TOPIC_PREFIX=prefix,
        MOTCUA_KEYS_DIR=str(keys), MOTCUA_DATA_DIR=str(tmp / "var")))


def wait_archived(root: Path, events: int, refused: int, proc: CliProcess,
                  timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        counts = (0, 0)
        if (root / "index.db").exists():
            archive = Archive.open(root)
            try:
                counts = archive.counts()
            finally:
                archive.close()
        if counts == (events, refused):
            return
        assert time.monotonic() < deadline, f"archive at {counts}, want {(events, refused)}" \
            f"\n{proc.output()}"
        assert proc.alive(), proc.output()
        time.sleep(0.3)


def test_the_archive_holds_every_valid_event_once_across_kill_9(
        tmp_path: Path, broker: Broker, kafka_config: dict[str, Any], day: Workload) -> None:
    prefix = unique_prefix("au")
    provision(kafka_config, prefix)
    valid = list(day.records)
    first = decode(valid[0][2])
    # a validly signed second event at an origin's place (its real key: a fork)
    fork = seal(type(first), origin=first.origin, origin_seq=first.origin_seq,
                prev_hash=first.prev_hash, dossier_id=first.dossier_id,
                occurred_at=first.occurred_at,
                data=first.data.model_copy(update={"field": "Đất đai (sửa)"}),
                key=Keyring(day.keys_dir)(first.origin))
    poison: list[tuple[str, bytes | None, bytes | None]] = [
        ("dossier-events", b"D-GARBAGE", b"\x00\xffnot json"),
        ("dossier-events", b"D-FORGED-1",
         encode(Chain("11977", SigningKey.generate()).emit("dossier.received", "D-FORGED-1"))),
        ("dossier-events", first.dossier_id.encode(), encode(fork)),
    ]
    half = len(valid) // 2
    produce(kafka_config, prefix, valid[:half] + poison[:2])
    proc = archiver(tmp_path, broker, prefix, day.keys_dir)
    proc.run("archive")
    root = tmp_path / "var" / "archive"
    wait_archived(root, half, 2, proc)
    # the rest, redelivered copies of the first half among it, and a kill -9 mid-way
    produce(kafka_config, prefix, valid[half:] + valid[:50] + poison[2:])
    time.sleep(0.3)
    proc.kill()
    proc.run("archive")
    wait_archived(root, len(valid), 3, proc)
    proc.stop()

    archive = Archive.open(root)
    try:
        stored = [line for _, line in archive.read()]
        assert sorted(stored) == sorted(v for _, _, v in valid)  # each valid event once
        # each origin's chain is whole: seqs 1..n, each linking to the one before
        chains: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        for line in stored:
            body = orjson.loads(line)
            chains[body["origin"]][body["origin_seq"]] = body
        for origin, chain in chains.items():
            assert sorted(chain) == list(range(1, len(chain) + 1)), origin
            for seq in range(2, len(chain) + 1):
                assert chain[seq]["prev_hash"] == chain[seq - 1]["hash"], (origin, seq)
        with archive.engine.connect() as conn:
            from consumers.audit.store import refused
            reasons = sorted(r.reason for r in conn.execute(refused.select()))
        assert any("fork" in r for r in reasons), reasons
        assert any("signature" in r for r in reasons), reasons
        # the segments are plain gzip: any tool reads them
        for file in (root / "segments").rglob("*.jsonl.gz"):
            assert gzip.decompress(file.read_bytes()).endswith(b"\n")
    finally:
        archive.close()


def test_a_crash_between_the_segment_write_and_the_index_leaves_no_torn_segment(
        tmp_path: Path, day: Workload) -> None:
    root = tmp_path / "archive"
    archive = Archive.open(root)
    events = [(v, decode(v)) for _, _, v in day.records[:40]]
    archive.append([Accepted("dossier-events", 0, i, v, e) for i, (v, e) in
                    enumerate(events[:20])], [], {("dossier-events", 0): 20})
    # the next batch reached the disk but the process died before the index committed it:
    # a whole member, and half of another, past the committed length
    e = events[20][1]
    path = segment_path(e.origin, e.local_date.isoformat())
    file = root / path
    committed = file.stat().st_size if file.exists() else 0
    member = gzip.compress(events[20][0] + b"\n")
    _append_at(file, committed, member + member[: len(member) // 2])
    stray = root / segment_path("site-nowhere", "2025-07-01")
    _append_at(stray, 0, member)  # a segment the index never named
    archive.close()

    reopened = Archive.open(root)  # what a restarted `motcua archive` does first
    try:
        assert not stray.exists()
        assert (file.stat().st_size if file.exists() else 0) == committed
        assert sorted(line for _, line in reopened.read()) == sorted(v for v, _ in events[:20])
        assert reopened.positions() == {("dossier-events", 0): 20}
        # and the batch, read again from Kafka, lands whole
        reopened.append([Accepted("dossier-events", 0, 20 + i, v, ev) for i, (v, ev) in
                         enumerate(events[20:])], [], {("dossier-events", 0): 40})
        assert sorted(line for _, line in reopened.read()) == sorted(v for v, _ in events)
    finally:
        reopened.close()


def test_up_keeps_an_archive_of_the_same_history_and_moves_one_of_another_aside(
        tmp_path: Path) -> None:
    """A fresh embedded broker: the archive reads the new log from its start (duplicates);
    an archive of another history than the node stores is evidence, so it is moved aside,
    never emptied."""
    from sqlalchemy import Engine, select

    from infra.cli.up import _reset_archive
    from infra.node_tables import outbox
    from infra.settings import load_settings
    from producers.migrate import open_store
    from producers.service import DossierService
    from schemas.keys import init_keystore

    settings = load_settings(data_dir=tmp_path / "var")
    keys = tmp_path / "keys"
    init_keystore(keys, ["11977"])

    def history(path: Path) -> Engine:
        store = open_store(f"sqlite:///{path}")
        service = DossierService(store, Keyring(keys))
        for _ in range(3):
            service.receive("11977", channel="online", procedure_code="1.000001",
                            field="Hộ tịch", due_date=date(2027, 1, 1),
                            components_digitised=True)
        return store

    first = history(tmp_path / "first.db")
    with first.connect() as conn:
        bodies = [bytes(b) for b in conn.execute(select(outbox.c.body)
                                                 .order_by(outbox.c.origin_seq)).scalars()]
    root = tmp_path / "var" / "archive"
    archive = Archive.open(root)
    archive.append([Accepted("dossier-events", 0, i, b, decode(b)) for i, b in enumerate(bodies)],
                   [], {("dossier-events", 0): 3})
    archive.close()
    said: list[str] = []
    _reset_archive(settings, first, said.append)
    archive = Archive.open(root)
    assert archive.counts() == (3, 0) and archive.positions() == {} and not said
    archive.append([], [], {("dossier-events", 0): 3})
    archive.close()

    second = history(tmp_path / "second.db")  # new node stores: the same places, new events
    _reset_archive(settings, second, said.append)
    assert not root.exists() and "moved aside" in said[0]
    aside = next((tmp_path / "var").glob("archive.*"))
    kept = Archive.open(aside)
    try:
        assert kept.counts() == (3, 0)  # the evidence, whole
    finally:
        kept.close()

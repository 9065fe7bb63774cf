"""The audit archive (consumers/audit, issue 13) on a real broker: every valid event once,
garbage, forgeries, forks and redeliveries refused or dropped, across a kill -9 of the
archive process; and on disk: a crash between writing a segment and committing the index
leaves no torn segment."""

from __future__ import annotations

import gzip
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from nacl.signing import SigningKey

from consumers.audit.store import Accepted, Archive, _append_at, segment_path
from infra.db import make_engine
from schemas.codec import decode, encode
from schemas.integrity import seal
from schemas.keys import Keyring
from schemas.note import Checkpoint
from tests.conftest import Broker, unique_prefix
from tests.factories import Chain
from tests.integration.test_broker import cli_env
from tests.streams_support import CliProcess, Workload, produce, provision, three_receipts


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
            archive = Archive.reader(root)  # never open(): that is the writer's, and repairs
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
    from sqlalchemy import select

    from infra.cli.up import _reset_archive
    from infra.node_tables import outbox
    from infra.settings import load_settings
    from schemas.keys import init_keystore

    settings = load_settings(data_dir=tmp_path / "var")
    keys = tmp_path / "keys"
    init_keystore(keys, ["11977"])

    first = three_receipts(tmp_path / "first.db", keys)
    with first.connect() as conn:
        bodies = [bytes(b) for b in conn.execute(select(outbox.c.body)
                                                 .order_by(outbox.c.origin_seq)).scalars()]
    root = tmp_path / "var" / "archive"
    archive = Archive.open(root)
    archive.append([Accepted("dossier-events", 0, i, b, decode(b)) for i, b in enumerate(bodies)],
                   [], {("dossier-events", 0): 3})
    archive.close()
    said: list[str] = []
    _reset_archive(settings, first, said.append, "site-phohien")
    archive = Archive.open(root)
    assert archive.counts() == (3, 0) and archive.positions() == {} and not said
    archive.append([], [], {("dossier-events", 0): 3})
    archive.close()

    # new node stores: the same places, new events
    second = three_receipts(tmp_path / "second.db", keys)
    _reset_archive(settings, second, said.append, "site-phohien")
    assert not root.exists() and "moved aside" in said[0]
    aside = next((tmp_path / "var").glob("archive.*"))
    kept = Archive.open(aside)
    try:
        assert kept.counts() == (3, 0)  # the evidence, whole
    finally:
        kept.close()


# --- audit verify: each tampering is caught, named by origin and seq ------------------------

def _add(archive: Archive, records: Sequence[tuple[str, bytes | None, bytes]],
         start: int = 0) -> None:
    """``records`` archived as one batch, at source offsets from ``start``."""
    archive.append([Accepted(t, 0, start + i, v, decode(v)) for i, (t, _, v) in
                    enumerate(records)], [], {("dossier-events", 0): start + len(records)})


def _build(root: Path, day: Workload) -> Archive:
    """The day's events archived as the consumer does, in batches of 300."""
    archive = Archive.open(root)
    for start in range(0, len(day.records), 300):
        _add(archive, day.records[start:start + 300], start)
    return archive


@pytest.fixture
def built(tmp_path: Path, day: Workload) -> Path:
    root = tmp_path / "archive"
    _build(root, day).close()
    return root


def _segment(root: Path, origin: str) -> tuple[str, list[bytes]]:
    """The busiest segment of ``origin`` and its lines."""
    files = sorted((root / "segments" / origin).glob("*.jsonl.gz"),
                   key=lambda f: -len(gzip.decompress(f.read_bytes()).split(b"\n")))
    rel = files[0].relative_to(root).as_posix()
    return rel, [x for x in gzip.decompress(files[0].read_bytes()).split(b"\n") if x]


def _rewrite(root: Path, rel: str, lines: list[bytes], index_hashes: bool = False) -> None:
    """An attacker with the disk: the segment rewritten, and the index's committed length
    made to match (so nothing looks cut or torn); with ``index_hashes`` the index's record
    of each event's hash too."""
    from sqlalchemy import update

    from consumers.audit.store import events as ev
    from consumers.audit.store import segments as seg

    data = gzip.compress(b"".join(x + b"\n" for x in lines))
    (root / rel).write_bytes(data)
    engine = make_engine(f"sqlite:///{root / 'index.db'}")
    with engine.begin() as conn:
        conn.execute(update(seg).where(seg.c.path == rel).values(committed_bytes=len(data)))
        if index_hashes:
            for line in lines:
                e = decode(line)
                conn.execute(update(ev).where(ev.c.origin == e.origin,
                                              ev.c.origin_seq == e.origin_seq)
                             .values(hash=e.hash))
    engine.dispose()


def _rewritten(records: Sequence[tuple[str, bytes | None, bytes]], day: Workload, origin: str
               ) -> tuple[list[tuple[str, bytes | None, bytes]], int]:
    """``records`` with ``origin``'s chain rewritten from its seq 2 and re-signed with its
    real (stolen) key; and the last seq rewritten."""
    stolen = Keyring(day.keys_dir)(origin)
    chain = sorted((decode(v) for _, _, v in records if decode(v).origin == origin),
                   key=lambda e: e.origin_seq)
    prev, new = chain[0].hash, {}
    for e in chain[1:]:
        forged = seal(type(e), origin=e.origin, origin_seq=e.origin_seq, prev_hash=prev,
                      dossier_id=e.dossier_id, occurred_at=e.occurred_at + timedelta(hours=1),
                      data=e.data, key=stolen)
        new[e.origin_seq] = encode(forged)
        prev = forged.hash
    out = []
    for t, k, v in records:
        e = decode(v)
        out.append((t, k, new.get(e.origin_seq, v) if e.origin == origin else v))
    return out, chain[-1].origin_seq


def _problems(root: Path, day: Workload, signatures: str = "all",
              audit: Path | None = None) -> list[str]:
    from consumers.audit.verify import verify_archive
    from schemas.keys import load_registry
    archive = Archive.reader(root)
    try:
        report = verify_archive(archive, load_registry(day.keys_dir), signatures,
                                audit_keys=load_registry(audit) if audit else None)
    finally:
        archive.close()
    return [str(p) for p in report.problems or []]


def test_a_clean_archive_verifies_with_every_signature_and_with_heads(
        built: Path, day: Workload) -> None:
    assert _problems(built, day, "all") == []
    assert _problems(built, day, "heads") == []


@pytest.mark.parametrize("signatures", ["all", "heads"])
def test_an_edited_event_is_named(built: Path, day: Workload, signatures: str) -> None:
    rel, lines = _segment(built, "11977")
    e = decode(lines[1])
    # the content changed, the hash left as it was
    other = "0" if e.event_id[-1] != "0" else "1"
    edited = lines[1].replace(e.event_id.encode(), (e.event_id[:-1] + other).encode())
    assert edited != lines[1]
    _rewrite(built, rel, [lines[0], edited, *lines[2:]])
    found = _problems(built, day, signatures)
    assert any(p.startswith(f"11977 seq {e.origin_seq}:") and "hash" in p for p in found), found


@pytest.mark.parametrize("signatures", ["all", "heads"])
def test_an_edited_event_with_its_hash_recomputed_is_named(
        built: Path, day: Workload, signatures: str) -> None:
    from schemas.codec import content_hash
    rel, lines = _segment(built, "11977")
    e = decode(lines[1])
    changed = e.model_copy(update={"occurred_at": e.occurred_at.replace(minute=(
        e.occurred_at.minute + 7) % 60)})
    forged = changed.model_copy(update={"hash": content_hash(changed.model_dump(mode="json"))})
    _rewrite(built, rel, [lines[0], encode(forged), *lines[2:]], index_hashes=True)
    found = _problems(built, day, signatures)
    here = [p for p in found if p.startswith("11977 ")]
    # the next event no longer links to it; with every signature, its own is refused too
    assert any("prev_hash is not the hash" in p for p in here), found
    if signatures == "all":
        assert any(p.startswith(f"11977 seq {e.origin_seq}:") and "signature" in p
                   for p in here), found


def test_a_deleted_event_is_named(built: Path, day: Workload) -> None:
    rel, lines = _segment(built, "11977")
    gone = decode(lines[2])
    _rewrite(built, rel, [*lines[:2], *lines[3:]])
    found = _problems(built, day)
    assert any(p.startswith(f"11977 seq {gone.origin_seq}:") and "missing" in p
               for p in found), found


def test_two_swapped_events_are_named(built: Path, day: Workload) -> None:
    rel, lines = _segment(built, "11977")
    a, b = decode(lines[0]), decode(lines[1])
    _rewrite(built, rel, [lines[1], lines[0], *lines[2:]])
    found = _problems(built, day)
    for e in (a, b):
        assert any(p.startswith(f"11977 seq {e.origin_seq}:") and "swapped" in p
                   for p in found), found


def test_a_truncated_tail_is_named(built: Path, day: Workload) -> None:
    rel, lines = _segment(built, "11977")
    file = built / rel
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # the index untouched
    found = _problems(built, day)
    assert any("truncated" in p for p in found), found
    last = decode(lines[-1])
    assert any(p.startswith(f"11977 seq {last.origin_seq}:") and "missing" in p
               for p in found), found


def test_audit_verify_exits_1_and_names_the_problem(built: Path, day: Workload) -> None:
    import subprocess

    from tests.integration.test_broker import MOTCUA
    env = cli_env(MOTCUA_KEYS_DIR=str(day.keys_dir))
    ok = subprocess.run([*MOTCUA, "audit", "verify", "--dir", str(built)], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 problems" in ok.stdout and f"{len(day.records):,} events" in ok.stdout
    rel, lines = _segment(built, "11977")
    _rewrite(built, rel, [*lines[:2], *lines[3:]])
    bad = subprocess.run([*MOTCUA, "audit", "verify", "--dir", str(built), "--signatures",
                          "heads"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"PROBLEM 11977 seq {decode(lines[2]).origin_seq}: missing" in bad.stdout
    assert "Traceback" not in bad.stderr


# --- audit replay: the archive's figures equal the live ones (G4) ----------------------------

def test_replay_from_the_archive_equals_the_live_figures(
        tmp_path: Path, broker: Broker, kafka_config: dict[str, Any], day: Workload) -> None:
    import json
    import subprocess

    from tests.integration.test_broker import MOTCUA
    from tests.streams_support import WorkerProcess

    prefix = unique_prefix("ar")
    provision(kafka_config, prefix)
    produce(kafka_config, prefix, day.records)
    worker = WorkerProcess(tmp_path, broker.bootstrap, prefix, day.keys_dir,
                           **broker.group_env).start()
    proc = archiver(tmp_path, broker, prefix, day.keys_dir)
    proc.run("archive")
    try:
        wait_archived(tmp_path / "var" / "archive", len(day.records), 0, proc)
        env = cli_env(MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap, MOTCUA_TOPIC_PREFIX=prefix,
                      MOTCUA_KEYS_DIR=str(day.keys_dir), MOTCUA_DATA_DIR=str(tmp_path / "var"))
        # the oracle: receipts and online receipts counted here from the events themselves
        bodies = [orjson.loads(v) for _, _, v in day.records]
        receipts = [b for b in bodies if b["type"] == "dossier.received"]
        online = sum(b["data"]["channel"] == "online" for b in receipts)
        at_commune = sum(b["data"]["receiving_node"] == "11977" for b in receipts)
        deadline = time.monotonic() + 120
        while True:  # until the worker has published what the archive holds
            out = subprocess.run([*MOTCUA, "audit", "replay", "--from", "2025-07-01", "--to",
                                  "2025-07-01", "--json"], env=env, capture_output=True,
                                 text=True, timeout=120)
            assert "Traceback" not in out.stderr, out.stderr
            body = json.loads(out.stdout)
            if not body["differences"] or time.monotonic() > deadline:
                break
            assert worker.alive(), worker.output()
            time.sleep(1)
        assert out.returncode == 0 and body["differences"] == [], body
        assert body["replay"] == body["live"]
        assert body["replay"]["received"] == len(receipts)
        assert body["replay"]["received.online"] == online
        assert body["counter_rules"] and body["events"] == len(day.records)
        commune = subprocess.run([*MOTCUA, "audit", "replay", "--scope", "commune:11977",
                                  "--from", "2025-07-01", "--to", "2025-07-01", "--json"],
                                 env=env, capture_output=True, text=True, timeout=120)
        shown = json.loads(commune.stdout)
        assert commune.returncode == 0 and shown["differences"] == [], shown
        assert shown["replay"]["received"] == at_commune
        text = subprocess.run([*MOTCUA, "audit", "replay", "--from", "2025-07-01", "--to",
                               "2025-07-01"], env=env, capture_output=True, text=True,
                              timeout=120)
        assert text.returncode == 0 and "0 differences" in text.stdout, text.stdout
        # live figures that differ (another system's counters topic): marked, exit 1
        other = unique_prefix("ax")
        provision(kafka_config, other)
        differ = subprocess.run([*MOTCUA, "audit", "replay", "--from", "2025-07-01", "--to",
                                 "2025-07-01"], env={**env, "MOTCUA_TOPIC_PREFIX": other},
                                capture_output=True, text=True, timeout=120)
        assert differ.returncode == 1, differ.stdout + differ.stderr
        assert any(line.split()[0] == "received" and "≠ DIFFERS" in line
                   for line in differ.stdout.splitlines() if line.strip()), differ.stdout
    finally:
        proc.stop()
        worker.stop()


def test_one_writer_per_archive_and_readers_never_repair(tmp_path: Path, day: Workload) -> None:
    from consumers.audit.store import ArchiveBusy
    root = tmp_path / "archive"
    writer = _build(root, day)
    try:
        with pytest.raises(ArchiveBusy, match="another process is writing"):
            Archive.open(root)
        # the writer between writing a segment and committing it: a reader leaves it be
        e = decode(day.records[0][2])
        file = root / segment_path(e.origin, e.local_date.isoformat())
        size = file.stat().st_size
        _append_at(file, size, b"pending member")
        reader = Archive.reader(root)
        assert reader.counts()[0] == len(day.records)
        reader.close()
        assert file.stat().st_size == size + len(b"pending member")
    finally:
        writer.close()
    Archive.open(root).close()  # free again once the writer closed; this one repairs
    assert file.stat().st_size == size


# --- motcua report: the officials' report, read back ------------------------------------------

def test_the_report_opens_in_a_spreadsheet_with_the_replayed_figures(
        built: Path, day: Workload, tmp_path: Path) -> None:
    import csv
    import io
    import json
    import subprocess

    from openpyxl import load_workbook

    from tests.integration.test_broker import MOTCUA

    bodies = [orjson.loads(v) for _, _, v in day.records]
    receipts = [b for b in bodies if b["type"] == "dossier.received"]
    by_node: dict[str, int] = defaultdict(int)
    for b in receipts:
        by_node[b["data"]["receiving_node"]] += 1
    online = sum(b["data"]["channel"] == "online" for b in receipts)
    env = cli_env(MOTCUA_KEYS_DIR=str(day.keys_dir))
    out = tmp_path / "bao-cao.xlsx"
    done = subprocess.run([*MOTCUA, "report", "--from", "2025-07-01", "--to", "2025-07-01",
                           "--format", "xlsx", "--out", str(out), "--dir", str(built)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    sheet = load_workbook(out).active
    assert sheet is not None
    cells = [[c.value for c in row] for row in sheet.iter_rows()]
    header = next(i for i, r in enumerate(cells) if r[:3] == ["Cấp", "Mã", "Đơn vị"])
    heads = cells[header]
    for label in ("Tiếp nhận", "Trực tuyến", "Trực tiếp", "Bưu chính", "Đúng hạn",
                  "Trễ hạn", "Tỷ lệ trực tuyến"):
        assert label in heads, heads
    table = {r[1]: dict(zip(heads, r, strict=True)) for r in cells[header + 1:]}
    assert len(table) == 1 + 2 + 104
    province = table["province"]
    assert province["Tiếp nhận"] == len(receipts)  # counted here from the events
    assert province["Trực tuyến"] == online
    assert abs(province["Tỷ lệ trực tuyến"] - online / len(receipts)) < 0.00005
    for node, n in by_node.items():  # every receiving node's row, site or commune
        assert table[node]["Tiếp nhận"] == n, node
    assert sum(table[c]["Tiếp nhận"] for c in table if c != "province") == len(receipts)
    assert "01/07/2025" in cells[1][0]

    as_csv = subprocess.run([*MOTCUA, "report", "--from", "2025-07-01", "--to", "2025-07-01",
                             "--format", "csv", "--dir", str(built), "--scope",
                             "commune:11977"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.reader(io.StringIO(as_csv.stdout)))
    at = next(i for i, r in enumerate(rows) if r[:3] == ["Cấp", "Mã", "Đơn vị"])
    assert rows[at + 1][1] == "11977" and int(rows[at + 1][3]) == by_node["11977"]
    as_json = subprocess.run([*MOTCUA, "report", "--from", "2025-07-01", "--to",
                              "2025-07-01", "--format", "json", "--dir", str(built)],
                             env=env, capture_output=True, text=True, timeout=120)
    body = json.loads(as_json.stdout)
    assert body["rows"][0]["received"] == len(receipts) and body["source"]["events"] == \
        len(day.records)
    # a user's mistake: one clear line, no traceback
    bad = subprocess.run([*MOTCUA, "report", "--from", "2025-07-01", "--to", "2025-07-01",
                          "--dir", str(built)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "needs --out" in bad.stderr and "Traceback" not in \
        bad.stderr, bad.stderr


def test_a_chain_rewritten_with_its_own_key_after_a_checkpoint_is_named(
        tmp_path: Path, day: Workload) -> None:
    """The origin's key is stolen: its chain is rewritten from seq k and every event
    re-signed, the segments and the index made to match. Hashes, links and signatures all
    hold; only the site's signed checkpoint shows it, naming the origin."""

    from consumers.audit.witness import checkpoint_name
    from schemas.keys import init_keystore

    audit = tmp_path / "audit"
    init_keystore(audit, ["site-phohien"])
    site_key = Keyring(audit)("site-phohien")
    root = tmp_path / "archive"
    archive = Archive.open(root)
    records = day.records
    half = len(records) // 2
    for part, (lo, hi) in enumerate(((0, half), (half, len(records)))):
        archive.append([Accepted(t, 0, lo + i, v, decode(v))
                        for i, (t, _, v) in enumerate(records[lo:hi])], [],
                       {("dossier-events", 0): hi})
        note = archive.checkpoint(checkpoint_name("site-phohien"), site_key,
                                  f"2025-07-01T1{part}:00:00+00:00")
        assert note is not None
    assert archive.checkpoint(checkpoint_name("site-phohien"), site_key, "x") is None
    assert [size for size, _, _ in archive.issued()][-1] == len(records)
    archive.close()
    assert _problems(root, day, "all", audit) == []

    rel, lines = _segment(root, "11977")
    rewritten, last = _rewritten([("dossier-events", None, x) for x in lines], day, "11977")
    _rewrite(root, rel, [v for _, _, v in rewritten], index_hashes=True)
    found = _problems(root, day, "all", audit)
    assert not any(("hash" in p and "content" in p) or "prev_hash" in p or "signature" in p
                   for p in found), found  # every other check holds
    assert any(p.startswith(f"11977 seq {last}:") and "rewritten" in p for p in found), found


def test_the_archive_publishes_signed_checkpoints_that_verify(
        tmp_path: Path, broker: Broker, kafka_config: dict[str, Any], day: Workload) -> None:
    from nacl.signing import VerifyKey

    from schemas.keys import load_registry
    from schemas.note import ED25519, Checkpoint, Note, Verifier
    from schemas.note import verify as verify_note
    from schemas.topics import CHECKPOINTS
    from tests.integration.test_relay import read_all

    prefix = unique_prefix("ac")
    provision(kafka_config, prefix)
    produce(kafka_config, prefix, day.records)
    proc = archiver(tmp_path, broker, prefix, day.keys_dir)
    proc.run("archive", "--site", "site-thaibinh", "--checkpoint-every", "1")
    try:
        # Thái Bình's archive has its own folder beside Phố Hiến's (both run in `up`)
        wait_archived(tmp_path / "var" / "archive-site-thaibinh", len(day.records), 0, proc)
        records = read_all(kafka_config, [prefix + CHECKPOINTS], 1, timeout=30)
        deadline = time.monotonic() + 30
        while Checkpoint.parse(Note.parse(records[-1].value.decode()).text).size < \
                len(day.records):
            assert time.monotonic() < deadline, "no checkpoint of the whole archive"
            time.sleep(1)
            records = read_all(kafka_config, [prefix + CHECKPOINTS], 1, timeout=30)
    finally:
        proc.stop()
    assert "Traceback" not in proc.output()
    note = Note.parse(records[-1].value.decode())
    assert records[-1].key == b"hungyen.motcua/site-thaibinh"
    public = load_registry(day.keys_dir / "audit").get("site-thaibinh")
    assert isinstance(public, VerifyKey)
    verify_note(note, Verifier("hungyen.motcua/site-thaibinh", ED25519, bytes(public)))
    cp = Checkpoint.parse(note.text)
    assert cp.size == len(day.records)
    assert cp.extensions[0].startswith("prev ")  # the checkpoint it extends
    assert len(cp.extensions) - 1 == len({orjson.loads(v)["origin"] for _, _, v in day.records})
    # and audit verify checks them all against the archive
    assert _problems(tmp_path / "var" / "archive-site-thaibinh", day, "heads",
                     day.keys_dir / "audit") == []


def test_a_checkpoint_interval_that_is_not_positive_is_refused(
        tmp_path: Path, broker: Broker, day: Workload) -> None:
    import subprocess

    from tests.integration.test_broker import MOTCUA
    out = subprocess.run([*MOTCUA, "archive", "--site", "site-phohien", "--checkpoint-every",
                          "-1"], env=cli_env(MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap,
                                             MOTCUA_KEYS_DIR=str(day.keys_dir),
                                             MOTCUA_DATA_DIR=str(tmp_path / "var")),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--checkpoint-every: -1" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_an_event_beyond_a_gap_counts_nowhere_until_the_gap_fills(
        tmp_path: Path, day: Workload) -> None:
    """The rule for a validly signed event whose seq leaps ahead of its origin's head
    (docs/audit.md): archived as evidence, but in no checkpoint, no replay and no report
    until the events before it arrive; `audit verify` names the gap."""
    from consumers.audit.replay import replay
    from consumers.audit.witness import checkpoint_name
    from schemas.counters import PROVINCE
    from schemas.keys import init_keystore
    from tests.factories import T0

    root = tmp_path / "archive"
    archive = _build(root, day)
    head = max((decode(v) for _, _, v in day.records if decode(v).origin == "11977"),
               key=lambda e: e.origin_seq)
    chain = Chain("11977", Keyring(day.keys_dir)("11977"))  # the origin's real key
    chain.seq, chain.head = head.origin_seq, head.hash
    more = [chain.emit("dossier.received", f"11977-250701-9{n:04d}", T0 + timedelta(hours=2))
            for n in range(50)]
    before = replay(archive).figures(PROVINCE, date(2025, 7, 1), date(2025, 7, 1))

    leap = more[-1]  # seq head + 50 arrives first
    archive.append([Accepted("dossier-events", 0, 10_000, encode(leap), leap)], [],
                   {("dossier-events", 0): 10_001})
    held = replay(archive)
    assert held.held == (("11977", leap.origin_seq),)
    assert held.figures(PROVINCE, date(2025, 7, 1), date(2025, 7, 1)) == before
    init_keystore(tmp_path / "audit", ["site-phohien"])
    note = archive.checkpoint(checkpoint_name("site-phohien"),
                              Keyring(tmp_path / "audit")("site-phohien"), "t")
    assert note is not None and Checkpoint.parse(note.text).size == len(day.records)
    archive.close()
    found = _problems(root, day, "heads")
    assert f"11977 seq {head.origin_seq + 1}: seqs {head.origin_seq + 1}-" \
        f"{leap.origin_seq - 1} missing (deleted, or never archived)" in found, found

    archive = Archive.open(root)
    try:
        archive.append([Accepted("dossier-events", 0, 10_001 + i, encode(e), e)
                        for i, e in enumerate(more[:-1])], [], {("dossier-events", 0): 10_050})
        filled = replay(archive)
    finally:
        archive.close()
    assert filled.held == ()
    after = filled.figures(PROVINCE, date(2025, 7, 1), date(2025, 7, 1))
    assert after.received == before.received + 50
    assert _problems(root, day, "heads") == []


def test_verify_and_replay_from_kafka_agree_with_the_archive_and_locate_a_forgery(
        tmp_path: Path, broker: Broker, kafka_config: dict[str, Any], day: Workload) -> None:
    import json
    import subprocess

    from sqlalchemy import update

    from consumers.audit.store import events as ev
    from tests.integration.test_broker import MOTCUA

    prefix = unique_prefix("ak")
    provision(kafka_config, prefix)
    forged = Chain("11977", SigningKey.generate()).emit("dossier.received", "D-FORGED-9")
    produce(kafka_config, prefix, day.records)
    (_, partition), end = next(iter(produce(kafka_config, prefix, [
        ("dossier-events", b"D-FORGED-9", encode(forged))]).items()))
    proc = archiver(tmp_path, broker, prefix, day.keys_dir)
    proc.run("archive")
    root = tmp_path / "var" / "archive"
    try:
        wait_archived(root, len(day.records), 1, proc)
    finally:
        proc.stop()
    env = cli_env(MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap, MOTCUA_TOPIC_PREFIX=prefix,
                  MOTCUA_KEYS_DIR=str(day.keys_dir), MOTCUA_DATA_DIR=str(tmp_path / "var"))

    def verify() -> tuple[int, list[dict[str, Any]]]:
        out = subprocess.run([*MOTCUA, "audit", "verify", "--source", "kafka", "--json"],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode in (0, 1), out.stderr
        body = json.loads(out.stdout)
        assert body["records"] == len(day.records) + 1
        return out.returncode, body["problems"]

    code, problems = verify()
    assert code == 1 and len(problems) == 1, problems  # the forgery, located; nothing else
    assert problems[0]["origin"] == "11977" and "signature" in problems[0]["reason"]
    assert f"dossier-events[{partition}]@{end - 1}:" in problems[0]["reason"], problems

    # the archive's record of one event rewritten: Kafka and the archive disagree there
    victim = decode(day.records[5][2])
    engine = make_engine(f"sqlite:///{root / 'index.db'}")
    with engine.begin() as conn:
        conn.execute(update(ev).where(ev.c.origin == victim.origin,
                                      ev.c.origin_seq == victim.origin_seq)
                     .values(hash="0" * 64))
    engine.dispose()
    code, problems = verify()
    assert code == 1 and any(p["origin"] == victim.origin and p["seq"] == victim.origin_seq
                             and "one of the two was rewritten" in p["reason"]
                             for p in problems), problems

    # the figures from Kafka equal those from the archive
    def replayed(source: str) -> dict[str, Any]:
        out = subprocess.run([*MOTCUA, "audit", "replay", "--from", "2025-07-01", "--to",
                              "2025-07-01", "--source", source, "--no-live", "--json"],
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        body: dict[str, Any] = json.loads(out.stdout)
        return body
    from_kafka, from_archive = replayed("kafka"), replayed("archive")
    assert from_kafka["replay"] == from_archive["replay"]
    assert from_kafka["events"] == from_archive["events"] == len(day.records)

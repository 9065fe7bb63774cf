"""The other site as witness (consumers/audit/witness.py, issue 13): it cosigns a site's
checkpoint only when its own archive holds the same events and the tree extends the one it
cosigned last; forks, rewritten histories and smaller trees are refused and kept as
evidence; and the witness's record exposes a site that rewrote its history, checkpoints and
all, after a checkpoint was cosigned. On disk first, then two archive processes on a real
broker."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, update

from consumers.audit.store import (
    Archive,
    checkpoints,
    cosignatures,
    events,
    frontiers,
    segments,
)
from consumers.audit.store import tree as tree_table
from consumers.audit.witness import COSIGNED, KNOWN, REFUSED, STALE, WAIT, Witness, checkpoint_name
from infra.db import make_engine
from schemas.codec import decode
from schemas.keys import Keyring, init_keystore, load_registry
from schemas.merkle import leaf_hash
from schemas.nodes import SITES
from schemas.note import COSIGNATURE_V1, ED25519, Checkpoint, Note, Verifier, sign
from schemas.note import verify as verify_note
from tests.conftest import Broker, unique_prefix
from tests.integration.test_audit import (
    _add,
    _problems,
    _rewritten,
    _segment,
    archiver,
    wait_archived,
)
from tests.integration.test_broker import MOTCUA, cli_env
from tests.streams_support import Workload, produce, provision

PH, TB = checkpoint_name("site-phohien"), checkpoint_name("site-thaibinh")


@pytest.fixture
def site_keys(day: Workload) -> Keyring:
    init_keystore(day.keys_dir / "audit", SITES)
    return Keyring(day.keys_dir / "audit")


def test_the_witness_cosigns_only_what_its_own_archive_holds_in_order(
        tmp_path: Path, day: Workload, site_keys: Keyring) -> None:
    registry = load_registry(day.keys_dir / "audit")
    records = day.records
    half = len(records) // 2
    signer, own = Archive.open(tmp_path / "ph"), Archive.open(tmp_path / "tb")
    witness = Witness(own, TB, site_keys("site-thaibinh"), registry)
    _add(signer, records[:half])
    _add(own, records[:half])
    first = signer.checkpoint(PH, site_keys("site-phohien"), "t1")
    _add(signer, records[half:], half)
    second = signer.checkpoint(PH, site_keys("site-phohien"), "t2")
    assert first is not None and second is not None

    # the second before the first: it extends a checkpoint the witness has not seen
    early = witness.check(second.encode())
    assert early.outcome == WAIT and "not seen yet" in early.reason, early
    v1 = witness.check(first.encode())
    assert v1.outcome == COSIGNED, v1
    assert v1.note is not None
    cosigned = Note.parse(v1.note)
    stamp = verify_note(cosigned, Verifier(TB, COSIGNATURE_V1,
                                           bytes(site_keys("site-thaibinh").verify_key)))
    assert stamp is not None and stamp > 0
    verify_note(cosigned, Verifier(PH, ED25519, bytes(site_keys("site-phohien").verify_key)))
    assert witness.check(first.encode()).outcome == KNOWN  # read again after a restart
    # the witness's archive lacks the second half: it waits, naming what it lacks
    lag = witness.check(second.encode())
    assert lag.outcome == WAIT and "is not archived here yet" in lag.reason, lag
    _add(own, records[half:], half)
    assert witness.check(second.encode()).outcome == COSIGNED
    # and now the first is smaller than what it cosigned: never cosigned again
    again = Checkpoint.parse(first.text)
    smaller = Checkpoint(PH, again.size - 1, again.root, again.extensions).text()
    stale = witness.check(Note(smaller, (sign(smaller, PH, site_keys("site-phohien")),))
                          .encode())
    assert stale.outcome == STALE, stale
    assert [size for _, size, _, _ in own.witnessed_notes(PH)] == \
        [Checkpoint.parse(first.text).size, len(records)]
    assert own.witness_refusals() == []


def test_the_witness_refuses_a_fork_and_keeps_the_evidence(
        tmp_path: Path, day: Workload, site_keys: Keyring) -> None:
    """A site shows its witness two histories: a second root for a size already cosigned,
    then a tree that does not extend the cosigned one, signed with its real key."""
    registry, key = load_registry(day.keys_dir / "audit"), site_keys("site-phohien")
    records = day.records
    signer, own = Archive.open(tmp_path / "ph"), Archive.open(tmp_path / "tb")
    witness = Witness(own, TB, site_keys("site-thaibinh"), registry)
    _add(signer, records)
    _add(own, records)
    honest = signer.checkpoint(PH, key, "t1")
    assert honest is not None and witness.check(honest.encode()).outcome == COSIGNED
    cp = Checkpoint.parse(honest.text)

    other_root = Checkpoint(PH, cp.size, bytes(32), cp.extensions).text()
    fork = witness.check(Note(other_root, (sign(other_root, PH, key),)).encode())
    assert fork.outcome == REFUSED and "second root" in fork.reason, fork
    # a bigger tree that claims to extend an older checkpoint (prev 0): another history
    bigger = Checkpoint(PH, cp.size + 1, bytes(32),
                        ("prev 0", *[x for x in cp.extensions if not x.startswith("prev")])
                        ).text()
    branch = witness.check(Note(bigger, (sign(bigger, PH, key),)).encode())
    assert branch.outcome == REFUSED and "extends checkpoint 0" in branch.reason, branch
    kept = own.witness_refusals()
    assert [(size, "fork" in reason) for _, size, reason, _ in kept] == \
        [(cp.size, True), (cp.size + 1, True)]
    for _, _, _, note in kept:  # the evidence verifies with the signer's key
        verify_note(Note.parse(note), Verifier(PH, ED25519, bytes(key.verify_key)))


def test_the_witness_refuses_a_chain_rewritten_with_a_stolen_origin_key(
        tmp_path: Path, day: Workload, site_keys: Keyring) -> None:
    registry = load_registry(day.keys_dir / "audit")
    rogue_records, top = _rewritten(day.records, day, "11977")
    rogue, own = Archive.open(tmp_path / "ph"), Archive.open(tmp_path / "tb")
    _add(rogue, rogue_records)
    _add(own, day.records)
    note = rogue.checkpoint(PH, site_keys("site-phohien"), "t1")
    assert note is not None
    verdict = Witness(own, TB, site_keys("site-thaibinh"), registry).check(note.encode())
    assert verdict.outcome == REFUSED, verdict
    assert verdict.reason.startswith(f"11977 seq {top}:") and "another history" in \
        verdict.reason, verdict
    assert own.witnessed_notes() == []


def test_the_witness_record_exposes_a_site_that_rewrote_history_and_checkpoints(
        tmp_path: Path, day: Workload, site_keys: Keyring) -> None:
    """After its checkpoint was cosigned, the site rewrites an origin's chain with the
    origin's stolen key, makes its index match, throws its checkpoints and cosignatures
    away and signs new ones. Its own archive then verifies; the witness's record does not,
    and names the origin."""
    registry = load_registry(day.keys_dir / "audit")
    key = site_keys("site-phohien")
    root = tmp_path / "archive"
    signer, own = Archive.open(root), Archive.open(tmp_path / "tb")
    _add(signer, day.records)
    _add(own, day.records)
    note = signer.checkpoint(PH, key, "t1")
    assert note is not None
    verdict = Witness(own, TB, site_keys("site-thaibinh"), registry).check(note.encode())
    assert verdict.outcome == COSIGNED and verdict.note is not None
    signer.add_cosignature(Checkpoint.parse(note.text).size, TB, verdict.note)
    signer.close()
    own.close()
    audit = day.keys_dir / "audit"
    assert _problems(root, day, "heads", audit) == []

    rel, lines = _segment(root, "11977")
    rewritten, top = _rewritten([("dossier-events", None, x) for x in lines], day, "11977")
    data = b"".join(v + b"\n" for _, _, v in rewritten)
    blob = gzip.compress(data)
    (root / rel).write_bytes(blob)
    engine = make_engine(f"sqlite:///{root / 'index.db'}")
    with engine.begin() as conn:
        conn.execute(update(segments).where(segments.c.path == rel)
                     .values(committed_bytes=len(blob)))
        for _, _, v in rewritten:
            e = decode(v)
            conn.execute(update(events).where(events.c.origin == e.origin,
                                              events.c.origin_seq == e.origin_seq)
                         .values(hash=e.hash, leaf=leaf_hash(v).hex()))
        for table in (checkpoints, cosignatures, frontiers, tree_table):
            conn.execute(delete(table))
    engine.dispose()
    signer = Archive.open(root)
    assert signer.checkpoint(PH, key, "t2") is not None  # re-signed with the site's own key
    signer.close()

    assert _problems(root, day, "heads", audit) == []  # alone, it holds together
    from consumers.audit.verify import verify_archive
    archive, witness = Archive.reader(root), Archive.reader(tmp_path / "tb")
    try:
        report = verify_archive(archive, load_registry(day.keys_dir), "heads",
                                audit_keys=registry, witnesses=[witness])
    finally:
        archive.close()
        witness.close()
    found = [str(p) for p in report.problems or []]
    assert report.witnessed == 1
    assert any(p.startswith(f"11977 seq {top}:") and "the witness archive" in p
               and "rewritten" in p for p in found), found


# --- two sites on a real broker -------------------------------------------------------------

def test_two_sites_witness_each_other_on_the_checkpoints_topic(
        tmp_path: Path, broker: Broker, kafka_config: dict[str, Any], day: Workload,
        site_keys: Keyring) -> None:
    from schemas.topics import CHECKPOINTS

    prefix = unique_prefix("wi")
    provision(kafka_config, prefix)
    produce(kafka_config, prefix, day.records)
    var = tmp_path / "var"
    roots = {"site-phohien": var / "archive", "site-thaibinh": var / "archive-site-thaibinh"}
    procs = {}
    for site in SITES:
        (tmp_path / site).mkdir()
        procs[site] = archiver(tmp_path / site, broker, prefix, day.keys_dir)
        procs[site].env["MOTCUA_DATA_DIR"] = str(var)
        procs[site].run("archive", "--site", site, "--checkpoint-every", "1")
    try:
        for site in SITES:
            wait_archived(roots[site], len(day.records), 0, procs[site])
        deadline = time.monotonic() + 60
        while True:  # each site's checkpoint of everything, cosigned by the other
            sizes = {}
            for site in SITES:
                archive = Archive.reader(roots[site])
                try:
                    sizes[site] = max((s for s, _, _ in archive.cosigned()), default=0)
                finally:
                    archive.close()
            if all(s == len(day.records) for s in sizes.values()):
                break
            assert time.monotonic() < deadline, (sizes, procs["site-phohien"].output(),
                                                 procs["site-thaibinh"].output())
            time.sleep(0.5)

        # Phố Hiến (its key stolen, or its operator) publishes a second history
        honest = Archive.reader(roots["site-phohien"])
        try:
            size, _, text = honest.issued()[-1]
        finally:
            honest.close()
        cp = Checkpoint.parse(Note.parse(text).text)
        forged = Checkpoint(PH, size, bytes(32), cp.extensions).text()
        from kafka import KafkaProducer
        producer = KafkaProducer(**kafka_config)
        producer.send(prefix + CHECKPOINTS, key=PH.encode(),
                      value=Note(forged, (sign(forged, PH, site_keys("site-phohien")),))
                      .encode().encode()).get(timeout=30)
        producer.close()
        deadline = time.monotonic() + 30
        while True:
            witness = Archive.reader(roots["site-thaibinh"])
            try:
                refused = witness.witness_refusals()
            finally:
                witness.close()
            if refused:
                break
            assert time.monotonic() < deadline, procs["site-thaibinh"].output()
            time.sleep(0.5)
        assert refused[0][1] == size and "second root" in refused[0][2], refused
    finally:
        for proc in procs.values():
            proc.stop()
    assert "REFUSED to cosign hungyen.motcua/site-phohien" in procs["site-thaibinh"].output()
    for proc in procs.values():
        assert "Traceback" not in proc.output()

    # `motcua audit verify` of up's layout: Phố Hiến's archive, Thái Bình's as the witness.
    # Its own archive and the checkpoints cosigned hold; the second history it showed the
    # witness is named
    out = subprocess.run([*MOTCUA, "audit", "verify", "--signatures", "heads"],
                         env=cli_env(MOTCUA_KEYS_DIR=str(day.keys_dir),
                                     MOTCUA_DATA_DIR=str(var)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout.count("PROBLEM") == 1 and " 1 problem;" in out.stdout, out.stdout
    assert f"refused to cosign checkpoint {size} of {PH}: a second root" in out.stdout, \
        out.stdout
    counted = re.search(r"(\d+) signed checkpoints checked, (\d+) cosigned, (\d+) in the "
                        r"witness's record", out.stdout)
    assert counted is not None and int(counted[2]) >= 1 and int(counted[3]) >= 1, out.stdout

    # the officials' report names the cosigned checkpoint its figures stand on, whole
    out = subprocess.run([*MOTCUA, "report", "--from", "2025-07-01", "--to", "2025-07-01",
                          "--format", "json", "--scope", "province"],
                         env=cli_env(MOTCUA_KEYS_DIR=str(day.keys_dir),
                                     MOTCUA_DATA_DIR=str(var)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    source = json.loads(out.stdout)["source"]
    assert f"cây {len(day.records):,}".replace(",", ".") in source["checkpoint"], source
    assert f"đồng ký: {TB} lúc" in source["checkpoint"], source
    note = Note.parse(source["checkpoint_note"])
    verify_note(note, Verifier(PH, ED25519, bytes(site_keys("site-phohien").verify_key)))
    verify_note(note, Verifier(TB, COSIGNATURE_V1,
                               bytes(site_keys("site-thaibinh").verify_key)))

    # a dossier's events, proven against that checkpoint; anyone checks with the public keys
    dossier = decode(day.records[0][2]).dossier_id
    env = cli_env(MOTCUA_KEYS_DIR=str(day.keys_dir), MOTCUA_DATA_DIR=str(var))
    out = subprocess.run([*MOTCUA, "audit", "prove", dossier], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    mine = sorted(decode(v).origin_seq for _, _, v in day.records
                  if decode(v).dossier_id == dossier)
    assert sorted(e["origin_seq"] for e in doc["events"]) == mine  # all, each with a proof
    assert doc["not_yet_checkpointed"] == []
    good, bad = tmp_path / "proof.json", tmp_path / "edited.json"
    good.write_text(out.stdout)
    checked = subprocess.run([*MOTCUA, "audit", "check", str(good)], env=env,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"cosigned by {TB}" in checked.stdout and checked.stdout.count("proof holds") == \
        len(mine), checked.stdout
    first = doc["events"][0]
    first["event"] = first["event"].replace(dossier, dossier + "X", 1)
    bad.write_text(json.dumps(doc))
    checked = subprocess.run([*MOTCUA, "audit", "check", str(bad)], env=env,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"PROBLEM {bad}: {first['origin']} seq {first['origin_seq']}:" in checked.stdout, \
        checked.stdout

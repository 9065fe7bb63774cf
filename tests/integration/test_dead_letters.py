"""`motcua dead-letters` and `motcua sync status` for people (issue 14), on a real broker: a
bad message read by two replicas is one letter naming both; `--reason` and `--since` filter;
a replica that rejected a message and then applied good batches shows no last error."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from consumers.sync.replica import Replica
from infra.db import make_engine
from schemas.codec import encode
from schemas.events import LOCAL_TZ
from schemas.keys import Keyring, init_keystore
from schemas.nodes import node_ids
from tests.conftest import Broker, unique_prefix
from tests.factories import Chain
from tests.integration.test_broker import MOTCUA, cli_env
from tests.streams_support import produce, provision
from tests.sync_support import sync_thread, wait_applied

GARBAGE = b"\x00\xffnot json at all"
Record = tuple[str, bytes | None, bytes | None]


@pytest.fixture
def prefix() -> str:
    return unique_prefix("dl")


def motcua(broker: Broker, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOTCUA, *args], capture_output=True, text=True, timeout=120,
                          env=cli_env(MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap,
                                      MOTCUA_TOPIC_PREFIX=prefix))


def letters(broker: Broker, prefix: str, *args: str) -> list[dict[str, Any]]:
    out = motcua(broker, prefix, "dead-letters", "--json", *args)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def status(broker: Broker, prefix: str, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    out = motcua(broker, prefix, "sync", "status", "--node", "site-phohien", "--db", db, *args)
    assert out.returncode == 0, out.stderr
    return out


def test_a_bad_message_read_by_two_replicas_is_one_letter_and_health_forgets_it(
        tmp_path: Path, kafka_config: dict[str, Any], broker: Broker, prefix: str) -> None:
    keys = tmp_path / "keys"
    init_keystore(keys, node_ids())
    chain = Chain("11977", Keyring(keys)("11977"))

    def good(n: int) -> list[Record]:
        ids = [f"D-11977-{chain.seq + i + 1:06d}" for i in range(n)]
        return [("dossier-events", d.encode(),
                 encode(chain.emit("dossier.received", d, receiving_node="11977")))
                for d in ids]

    forged = Chain("11977", SigningKey.generate()).emit("dossier.received", "D-11977-FORGED")
    db = f"sqlite:///{tmp_path}/{{node}}.db"
    replicas = [Replica.open(make_engine(db.format(node=n)), n)
                for n in ("site-phohien", "site-thaibinh")]
    provision(kafka_config, prefix)
    with sync_thread(replicas[0], kafka_config, keys, prefix) as phohien, \
            sync_thread(replicas[1], kafka_config, keys, prefix):

        def publish(records: list[Record]) -> None:
            ends = produce(kafka_config, prefix, records)
            for replica in replicas:
                wait_applied(replica, ends, 60)

        publish([*good(3), ("dossier-events", b"D-GARBAGE", GARBAGE)])
        # --since is read to the second: the second bad message comes in a later second
        boundary = (datetime.now(LOCAL_TZ) + timedelta(seconds=1)).replace(microsecond=0)
        time.sleep(max(0.0, (boundary - datetime.now(LOCAL_TZ)).total_seconds()) + 0.05)
        publish([*good(2), ("dossier-events", b"D-11977-FORGED", encode(forged))])
        publish(good(2))  # good batches after the rejections
    assert phohien.dead == 2 and phohien.last_error is None  # read once its thread is done

    # one letter per bad message, both readers named, in the order they were first filed
    everything = letters(broker, prefix)
    assert [d["dossier_id"] for d in everything] == [None, "D-11977-FORGED"]
    garbage, bad_signature = everything
    for letter in everything:
        assert letter["readers"] == ["sync:site-phohien", "sync:site-thaibinh"]
        assert letter["raw_letters"] == 2
        assert letter["source"]["topic"] == prefix + "dossier-events"
        assert letter["first_filed"].endswith("+07:00")
        assert letter["first_filed"] <= letter["last_filed"]
    assert "not valid UTF-8" in garbage["reason"] and garbage["origin"] is None
    assert "signature" in bad_signature["reason"] and bad_signature["origin"] == "11977"

    assert letters(broker, prefix, "--reason", "SIGNATURE") == [bad_signature]
    assert letters(broker, prefix, "--reason", "chain break") == []
    since = boundary.strftime("%Y-%m-%d %H:%M:%S")
    assert letters(broker, prefix, "--since", since) == [bad_signature]
    assert letters(broker, prefix, "--since", boundary.date().isoformat()) == everything
    assert letters(broker, prefix, "--since", since, "--reason", "utf-8") == []

    text = motcua(broker, prefix, "dead-letters").stdout.splitlines()
    assert text[-1].startswith("2 of 2 bad messages shown (4 dead letters from 2 readers")
    heads = [line for line in text if "found by" in line]
    assert len(heads) == 2 and all(
        line.endswith("found by sync site-phohien, sync site-thaibinh") for line in heads)
    assert "dossier D-11977-FORGED  origin 11977" in heads[1]
    assert "dossier -  origin -" in heads[0] and "+00:00" not in heads[0]

    wrong = motcua(broker, prefix, "dead-letters", "--since", "yesterday")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "--since: 'yesterday' is neither a date" in wrong.stderr.splitlines()[-1]

    # the rejection is history: counted, not the last error of a healthy replica
    [row] = json.loads(status(broker, prefix, db, "--json").stdout)
    assert row["last_error"] is None and row["dead_letters"] == 2
    assert row["past_error"].startswith("rejected: ") and "signature" in row["past_error"]
    assert "last error" not in status(broker, prefix, db).stdout.splitlines()[1]


def test_sync_status_shows_an_error_while_it_is_current_on_one_short_line(
        tmp_path: Path, broker: Broker, kafka_config: dict[str, Any], prefix: str) -> None:
    keys = tmp_path / "keys"
    init_keystore(keys, ["11977"])
    db = f"sqlite:///{tmp_path}/{{node}}.db"
    replica = Replica.open(make_engine(db.format(node="site-phohien")), "site-phohien")
    provision(kafka_config, prefix)
    reason = "the replica's database refuses it:\n" + "x" * 1500  # note() keeps 2000
    replica.note(reason)

    [row] = json.loads(status(broker, prefix, db, "--json").stdout)
    assert row["last_error"] == reason  # whole in --json
    line = status(broker, prefix, db).stdout.splitlines()[1]
    assert "last error" in line and "refuses it: xxx" in line and line.endswith("…")
    assert len(line) < 200

    event = Chain("11977", Keyring(keys)("11977")).emit("dossier.received", "D-11977-000001",
                                                        receiving_node="11977")
    replica.apply([event])
    [row] = json.loads(status(broker, prefix, db, "--json").stdout)
    assert row["last_error"] is None and row["past_error"] == reason
    assert "last error" not in status(broker, prefix, db).stdout.splitlines()[1]

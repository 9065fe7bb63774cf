"""Hash chain, signatures, the keystore and the file check's chain rules (DESIGN.md G6)."""

from __future__ import annotations

import copy
import stat
from pathlib import Path

import pytest

from schemas.check import check_lines, seq_gaps
from schemas.codec import decode, encode
from schemas.errors import BadHash, BadSignature, SchemaError, UnknownOrigin
from schemas.events import GENESIS_HASH
from schemas.integrity import verify
from schemas.keys import KeystoreError, init_keystore, load_registry, load_signing_key
from schemas.nodes import node_ids
from tests.factories import Chain, registry_of


def test_chain_links_each_event_to_the_previous_one() -> None:
    chain = Chain("11977")
    events = [chain.emit("dossier.resolved") for _ in range(3)]
    assert [e.origin_seq for e in events] == [1, 2, 3]
    assert events[0].prev_hash == GENESIS_HASH
    assert events[1].prev_hash == events[0].hash
    assert events[2].prev_hash == events[1].hash


def test_verify_rejects_a_valid_event_under_another_nodes_key() -> None:
    alice, mallory = Chain("11977"), Chain("11977")  # same id, different key
    event = mallory.emit("dossier.resolved")
    with pytest.raises(BadSignature):
        verify(event, registry_of(alice))


def test_verify_rejects_unknown_origin() -> None:
    event = Chain("12337").emit("dossier.resolved")
    with pytest.raises(UnknownOrigin, match="'12337' has no key"):
        verify(event, registry_of(Chain("11977")))


def test_keystore_init_is_idempotent_and_private(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert init_keystore(keys, node_ids()) == (106, 0)
    registry_before = (keys / "registry.json").read_text()
    assert init_keystore(keys, node_ids()) == (0, 106)
    assert (keys / "registry.json").read_text() == registry_before
    mode = stat.S_IMODE((keys / "11977.key").stat().st_mode)
    assert mode == 0o600

    registry = load_registry(keys)
    assert len(registry) == 106
    chain = Chain("site-thaibinh", load_signing_key(keys, "site-thaibinh"))
    verify(decode(encode(chain.emit("hotline.call_received"))), registry)


def test_keystore_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="run `motcua keys init`"):
        load_registry(tmp_path)
    with pytest.raises(KeystoreError, match="no private key for node 11977"):
        load_signing_key(tmp_path, "11977")
    (tmp_path / "registry.json").write_text('{"11977": "not-base64!"}')
    with pytest.raises(KeystoreError, match="not valid base64 Ed25519"):
        load_registry(tmp_path)


def test_check_accepts_a_chain_in_any_order_with_duplicates() -> None:
    chain = Chain("11977")
    raws = [encode(chain.emit("dossier.resolved")) for _ in range(5)]
    order = [raws[3], raws[0], raws[4], raws[1], raws[0], raws[2]]
    results = list(check_lines(order, registry_of(chain)))
    assert [r.error for r in results] == [None] * 6
    assert sum(r.duplicate for r in results) == 1


def test_check_finds_a_fork_and_a_broken_link() -> None:
    chain = Chain("11977")
    first = chain.emit("dossier.resolved")
    second = chain.emit("dossier.resolved")
    # the same key signs a different event 2 (a fork), and an event 3 linked to nothing
    fork = Chain("11977", chain.key)
    fork.seq, fork.head = 1, first.hash
    other_second = fork.emit("dossier.returned")
    stray = Chain("11977", chain.key)
    stray.seq, stray.head = 2, "f" * 64
    third = stray.emit("dossier.returned")
    results = list(check_lines([encode(e) for e in (first, second, other_second, third)],
                               registry_of(chain)))
    assert results[0].error is None and results[1].error is None
    assert results[2].error is not None and "forked chain" in results[2].error
    assert results[3].error is not None and "broken chain" in results[3].error


def test_check_finds_a_broken_link_seen_backwards() -> None:
    chain = Chain("11977")
    first = chain.emit("dossier.resolved")
    stray = Chain("11977", chain.key)
    stray.seq, stray.head = 1, "e" * 64
    second = stray.emit("dossier.returned")
    results = list(check_lines([encode(second), encode(first)], registry_of(chain)))
    assert results[0].error is None
    error = results[1].error or ""
    assert "names another event as its predecessor (line 1)" in error, error


def test_a_changed_copy_of_a_verified_event_does_not_verify() -> None:
    chain = Chain("11977")
    registry = registry_of(chain)
    for event in (chain.emit("dossier.resolved"), decode(encode(chain.emit("dossier.resolved")))):
        verify(event, registry)
        forged = event.model_copy(update={"origin_seq": 77, "dossier_id": "X"})
        with pytest.raises(BadHash):
            verify(forged, registry)
        verify(copy.deepcopy(event), registry)  # an unchanged copy is still the event


def test_a_signature_has_one_spelling() -> None:
    """base64 leaves 4 bits unused before '=='; a variant spelling is rejected, not
    accepted as 'the same' signature."""
    chain = Chain("11977")
    raw = encode(chain.emit("dossier.resolved"))
    event = decode(raw)
    last = event.sig[-3]
    variant = "BCDEFGHIJKLMNOP"["AQgw".index(last)] if last in "AQgw" else "A"
    forged = raw.replace(event.sig.encode(), (event.sig[:-3] + variant + "==").encode())
    with pytest.raises(SchemaError, match="sig: expected the base64"):
        decode(forged)


def test_a_repeated_bad_line_is_bad_too_and_gaps_are_found() -> None:
    chain = Chain("11977")
    events = [chain.emit("dossier.resolved") for _ in range(6)]
    stray = Chain("11977", chain.key)  # seq 1 with a non-genesis prev_hash
    stray.head = "d" * 64
    bad_first = encode(stray.emit("dossier.resolved"))
    results = list(check_lines([bad_first, bad_first], registry_of(chain)))
    assert all(r.error for r in results), [r.error for r in results]
    assert "repeats line 1" in (results[1].error or "")

    kept = [events[i] for i in (0, 1, 4, 5)]  # seq 3 and 4 missing
    good = [r for r in check_lines([encode(e) for e in kept], registry_of(chain))]
    seqs = {"11977": {r.event.origin_seq for r in good if r.event is not None}}
    assert seq_gaps(seqs) == [("11977", 3, 4)]

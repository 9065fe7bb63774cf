"""schemas/note.py against signatures made by other implementations: the example of Go's
golang.org/x/mod/sumdb/note (its documented key, text and signature), and a real
checkpoint of a Certificate Transparency staging log cosigned by a public witness
(remora.n621.de), as published with the tests of transparency-dev's Python checkpoint
code. Ed25519 signatures are deterministic, so signing the Go example must give the Go
signature byte for byte."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from nacl.signing import SigningKey

from schemas.note import (
    COSIGNATURE_V1,
    ED25519,
    Checkpoint,
    Note,
    NoteError,
    Verifier,
    cosign,
    sign,
    verify,
)

GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
GO_SIG = ("— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqd"
          "ngotpRZb6KE6RyyBwJnAM=\n")

CT_CHECKPOINT = ("arche2025h1.staging.ct.transparency.dev\n1432088532\n"
                 "U7WM79jrzyhGZ5/GUBTpM7NzwdyfFx61t3RovgcC4Ro=\n")
REMORA_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
REMORA_SIG = ("— remora.n621.de 2net5wAAAABqEiEgPlfF3V06o0Y+fHM+J5J9s27wgxxcOVSpZ/2g/KSiXCg9DEZ"
              "I+aVCIobWX9sXTynk5XeU/zZ0WBxtqB0DrAWfBw==\n")


def go_key() -> SigningKey:
    raw = base64.b64decode(GO_SKEY.split("+", 4)[4])
    assert raw[0] == ED25519
    return SigningKey(raw[1:])


def test_a_note_signs_as_go_sumdb_note_does() -> None:
    key = go_key()
    assert str(Verifier("PeterNeumann", ED25519, bytes(key.verify_key))) == GO_VKEY
    assert sign(GO_TEXT, "PeterNeumann", key).line() == GO_SIG
    note = Note.parse(GO_TEXT + "\n" + GO_SIG)
    assert note.text == GO_TEXT and note.encode() == GO_TEXT + "\n" + GO_SIG
    assert verify(note, Verifier.parse(GO_VKEY)) is None


def test_a_published_cosignature_verifies_and_a_changed_checkpoint_does_not() -> None:
    remora = Verifier.parse(REMORA_VKEY)
    assert remora.kind == COSIGNATURE_V1
    note = Note.parse(CT_CHECKPOINT + "\n" + REMORA_SIG)
    assert verify(note, remora) == int.from_bytes(base64.b64decode(REMORA_SIG.split()[-1])[4:12])
    checkpoint = Checkpoint.parse(note.text)
    assert checkpoint.size == 1432088532 and checkpoint.text() == CT_CHECKPOINT
    changed = dataclasses.replace(checkpoint, size=42)
    with pytest.raises(NoteError, match="does not match"):
        verify(Note(changed.text(), note.signatures), remora)


def test_our_checkpoints_round_trip_signed_and_cosigned() -> None:
    log, witness = SigningKey(b"\x01" * 32), SigningKey(b"\x02" * 32)
    cp = Checkpoint("hungyen.motcua/site-phohien", 184233, bytes(range(32)),
                    ("head site-phohien 4211 9f2c", "head 11977 18 0a1b"))
    text = cp.text()
    note = Note(text, (sign(text, "hungyen.motcua/site-phohien", log),
                       cosign(text, "hungyen.motcua/site-thaibinh/witness", witness,
                              1_751_700_000)))
    back = Note.parse(note.encode())
    assert back == note and Checkpoint.parse(back.text) == cp
    log_key = Verifier("hungyen.motcua/site-phohien", ED25519, bytes(log.verify_key))
    witness_key = Verifier("hungyen.motcua/site-thaibinh/witness", COSIGNATURE_V1,
                           bytes(witness.verify_key))
    assert Verifier.parse(str(witness_key)) == witness_key
    assert verify(back, log_key) is None
    assert verify(back, witness_key) == 1_751_700_000
    # a history rewritten after the fact: the signatures no longer hold
    forged = dataclasses.replace(cp, root=bytes(32))
    for key in (log_key, witness_key):
        with pytest.raises(NoteError, match="does not match"):
            verify(Note(forged.text(), back.signatures), key)
    # the log's key is not the witness's: a cosignature is not a note signature
    with pytest.raises(NoteError, match="no signature by"):
        verify(back, Verifier(witness_key.name, ED25519, witness_key.public))


@pytest.mark.parametrize(("text", "reason"), [
    ("origin\n0123\n" + "A" * 44 + "\n", "leading zeros"),
    ("origin\n12\nnot base64!\n", "not base64"),
    ("origin\n12\n" + base64.b64encode(b"x" * 31).decode() + "\n", "31 bytes"),
    ("origin\n12\n", "an origin, a size and a root"),
    ("origin\n\n12\nAAAA\n", "an origin, a size and a root"),
])
def test_a_malformed_checkpoint_is_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(NoteError, match=reason):
        Checkpoint.parse(text)


@pytest.mark.parametrize(("data", "reason"), [
    (GO_TEXT, "blank line"),
    (GO_TEXT + "\n", "at least one signature"),
    (GO_TEXT + "\n- PeterNeumann AAAA\n", "not a signature line"),
    (GO_TEXT + "\n— PeterNeumann ***\n", "not base64"),
    (GO_TEXT + "\n— Peter+Neumann " + GO_SIG.split()[-1] + "\n", "malformed"),
])
def test_a_malformed_note_is_refused_with_the_reason(data: str, reason: str) -> None:
    with pytest.raises(NoteError, match=reason):
        Note.parse(data)


@pytest.mark.parametrize("vkey", [
    GO_VKEY.replace("c74f20a3", "c74f20a4"),  # a key ID that is not this key's
    GO_VKEY[:-2],  # a truncated key
    "PeterNeumann+c74f20a3",
    "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
])
def test_a_malformed_verifier_key_is_refused(vkey: str) -> None:
    with pytest.raises(NoteError, match="verifier key"):
        Verifier.parse(vkey)

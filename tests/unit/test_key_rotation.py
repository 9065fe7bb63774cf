"""Key rotation (issue 14): each key signs its node's events from its from_seq on, so a chain
that crosses a rotation verifies whole and a retired key signs nothing new (docs/keys.md)."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from infra.cli.main import main
from schemas import keys as keystore
from schemas.check import check_lines
from schemas.codec import encode
from schemas.errors import BadSignature
from schemas.events import AnyEvent
from schemas.integrity import KeyRegistry, verify
from schemas.keys import (
    Keyring,
    KeystoreError,
    init_keystore,
    load_registry,
    load_signing_key,
    rotate_key,
)
from tests.factories import Chain

NODE = "11977"


def crossing(key1: SigningKey, key2: SigningKey) -> tuple[list[AnyEvent], Chain]:
    """Seqs 1..5 signed with key 1, then 6..7 with key 2; the chain is left at seq 6."""
    chain = Chain(NODE, key1)
    events = [chain.emit("dossier.resolved") for _ in range(5)]
    chain.key = key2
    events.append(chain.emit("dossier.resolved"))
    return events, chain


def test_a_chain_signed_across_a_rotation_verifies_whole() -> None:
    key1, key2 = SigningKey.generate(), SigningKey.generate()
    events, chain = crossing(key1, key2)
    events.append(chain.emit("dossier.resolved"))
    registry = KeyRegistry({NODE: [(1, key1.verify_key), (6, key2.verify_key)]})
    for event in events:
        verify(event, registry)
    results = list(check_lines([encode(e) for e in events], registry))
    assert [r.error for r in results] == [None] * 7


def test_the_old_key_after_its_range_and_the_new_before_its_own_are_refused() -> None:
    key1, key2 = SigningKey.generate(), SigningKey.generate()
    _, chain = crossing(key1, key2)
    registry = KeyRegistry({NODE: [(1, key1.verify_key), (6, key2.verify_key)]})
    chain.key = key1  # what a thief of key 1 would write next
    stolen = chain.emit("dossier.resolved")
    assert stolen.origin_seq == 7
    with pytest.raises(BadSignature, match=r"key valid for seq 1-5, not for seq 7: a retired"):
        verify(stolen, registry)
    early = Chain(NODE, key2).emit("dossier.resolved")  # seq 1 with the new key
    with pytest.raises(BadSignature, match=r"key valid for seq 6 on, not for seq 1"):
        verify(early, registry)
    stranger = Chain(NODE).emit("dossier.resolved")
    with pytest.raises(BadSignature, match="does not verify with 11977's public key for seq 1"):
        verify(stranger, registry)


def test_an_old_format_registry_loads_as_keys_from_seq_1(tmp_path: Path) -> None:
    key = SigningKey.generate()
    old = {NODE: base64.b64encode(bytes(key.verify_key)).decode()}
    (tmp_path / "registry.json").write_text(json.dumps(old))
    registry = load_registry(tmp_path)
    assert registry.keys_of(NODE) == ((1, key.verify_key),)
    chain = Chain(NODE, key)
    for _ in range(3):
        verify(chain.emit("dossier.resolved"), registry)
    # `keys init` writes the new format and keeps the key
    (tmp_path / f"{NODE}.key").write_text(base64.b64encode(bytes(key)).decode())
    assert init_keystore(tmp_path, [NODE]) == (0, 1)
    written = json.loads((tmp_path / "registry.json").read_text())
    assert written == {NODE: [{"from_seq": 1, "key": old[NODE]}]}


@pytest.mark.parametrize(("entries", "words"), [
    ({NODE: [{"from_seq": 2, "key": "A" * 43 + "="}]}, "from_seq must start at 1"),
    ({NODE: [{"key": "A" * 43 + "="}]}, "has no 'from_seq'"),
    ({NODE: []}, "expected a list"),
])
def test_a_bad_registry_is_one_clear_error(tmp_path: Path, entries: object, words: str) -> None:
    (tmp_path / "registry.json").write_text(json.dumps(entries))
    with pytest.raises(KeystoreError, match=words):
        load_registry(tmp_path)


def test_rotate_keeps_the_old_key_aside_and_a_loaded_registry_follows(tmp_path: Path) -> None:
    init_keystore(tmp_path, [NODE, "site-phohien"])
    keyring, registry = Keyring(tmp_path), load_registry(tmp_path)
    chain = Chain(NODE, keyring.for_seq(NODE, 1))
    events = [chain.emit("dossier.resolved") for _ in range(5)]
    old = load_signing_key(tmp_path, NODE)

    aside = rotate_key(tmp_path, NODE, 6)

    assert aside == tmp_path / f"{NODE}.key.1"
    assert stat.S_IMODE(aside.stat().st_mode) == 0o600
    assert aside.read_text() == base64.b64encode(bytes(old)).decode() + "\n"
    with pytest.raises(KeystoreError, match="seq 5 is before its key's first seq 6"):
        keyring.for_seq(NODE, 5)
    chain.key = keyring.for_seq(NODE, 6)
    assert chain.key != old
    events += [chain.emit("dossier.resolved") for _ in range(2)]
    for event in events:  # loaded before the rotation: a failed check reads the file again
        verify(event, registry)
    assert [first for first, _ in registry.keys_of(NODE)] == [1, 6]

    assert init_keystore(tmp_path, [NODE]) == (0, 1)  # keys init keeps the history
    assert [first for first, _ in load_registry(tmp_path).keys_of(NODE)] == [1, 6]
    with pytest.raises(KeystoreError, match="next seq in this store is 3"):
        rotate_key(tmp_path, NODE, 3)


def test_a_loaded_registry_looks_at_its_file_now_and_then(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_keystore(tmp_path, [NODE])
    registry = load_registry(tmp_path)
    chain = Chain(NODE, load_signing_key(tmp_path, NODE))
    verify(chain.emit("dossier.resolved"), registry)
    rotate_key(tmp_path, NODE, 2)
    monkeypatch.setattr(keystore, "REFRESH_SECONDS", 0.0)
    with pytest.raises(BadSignature, match="retired key"):  # the old key, past its range
        verify(chain.emit("dossier.resolved"), registry)


def test_rotate_on_the_command_line_refuses_clearly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init_keystore(tmp_path, [NODE])
    cases = [
        (["--node", "99999"], "unknown node '99999'"),
        (["--node", NODE, "--db", f"sqlite:///{tmp_path / 'nope.db'}"], "no node store at"),
        ([], "keys rotate needs --node ID"),
    ]
    (tmp_path / "empty.db").write_bytes(b"")
    cases.append((["--node", NODE, "--db", f"sqlite:///{tmp_path / 'empty.db'}"],
                  "cannot read the node store"))
    for extra, words in cases:
        assert main(["keys", "rotate", "--dir", str(tmp_path), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / f"{NODE}.key.1").exists()


def test_a_retired_key_put_back_signs_nothing_and_init_refuses_it(tmp_path: Path) -> None:
    """Review finding: `keys init` used to restart the history from whatever key file was
    there, so a retired key copied back became valid from seq 1 and signed again."""
    init_keystore(tmp_path, [NODE])
    aside = rotate_key(tmp_path, NODE, 6)
    assert aside is not None
    newest = load_registry(tmp_path).keys_of(NODE)
    (tmp_path / f"{NODE}.key").write_text(aside.read_text())  # the retired key put back
    with pytest.raises(KeystoreError, match=r"not the newest key .* \(a retired key put back\?\)"):
        init_keystore(tmp_path, [NODE])
    assert load_registry(tmp_path).keys_of(NODE) == newest  # the history is untouched
    with pytest.raises(KeystoreError, match="it signs nothing"):
        Keyring(tmp_path).for_seq(NODE, 100)


def test_a_rotation_cut_short_is_finished_by_init_never_undone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after the registry names the new key but before its seed is in place: the
    next `keys init` puts the waiting seed in place (it used to roll the registry back)."""
    init_keystore(tmp_path, [NODE])
    real_replace = Path.replace

    def crash(self: Path, target: Path) -> Path:
        if self.name == f"{NODE}.key.new":
            raise OSError("power cut")
        return real_replace(self, target)
    monkeypatch.setattr(Path, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        rotate_key(tmp_path, NODE, 6)
    monkeypatch.setattr(Path, "replace", real_replace)
    assert [f for f, _ in load_registry(tmp_path).keys_of(NODE)] == [1, 6]
    init_keystore(tmp_path, [NODE])
    assert load_registry(tmp_path).keys_of(NODE)[-1][1] == load_signing_key(
        tmp_path, NODE).verify_key
    assert Keyring(tmp_path).for_seq(NODE, 6) == load_signing_key(tmp_path, NODE)
    assert not (tmp_path / f"{NODE}.key.new").exists()

"""The keystore: the nodes' Ed25519 key pairs and the public-key registry file.

Layout of a key directory (default ``var/keys``)::

    <node_id>.key            the node's current 32-byte private seed, base64, mode 0600
    <node_id>.key.<from_seq> a retired key, kept aside after ``motcua keys rotate``; never
                             signs again
    registry.json            {"node_id": [{"from_seq": 1, "key": "<public, base64>"}, ...]}

Each public key signs its node's events from its ``from_seq`` up to the next key's, so events
signed before a rotation stay verifiable (docs/keys.md). The first format, ``{"node_id":
"<public key>"}``, still loads (one key, from seq 1). In production each node keeps only its
own ``.key``; ``registry.json`` is distributed to every reader. ``init`` never overwrites an
existing key: rotating a key is a deliberate act.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey, VerifyKey

from schemas.errors import MotcuaError
from schemas.integrity import KeyRegistry, parse_entries

REGISTRY_FILE = "registry.json"
#: how often a running verifier looks at registry.json's mtime (besides on a failed check)
REFRESH_SECONDS = 1.0

Entries = dict[str, list[tuple[int, VerifyKey]]]


class KeystoreError(MotcuaError):
    """A key file or the registry is missing or unreadable."""


def init_keystore(directory: Path, node_ids: Iterable[str]) -> tuple[int, int]:
    """Create missing key pairs and (re)write the registry, keeping the key history of every
    node whose current key it already lists. Returns (created, kept)."""
    directory.mkdir(parents=True, exist_ok=True)
    registry = directory / REGISTRY_FILE
    known = _read_entries(registry) if registry.exists() else {}
    created = kept = 0
    entries: Entries = {}
    for node in node_ids:
        path = directory / f"{node}.key"
        history = known.get(node, [])
        if history:
            _finish_rotation(directory, node, history[-1][1])
        if path.exists():
            key = load_signing_key(directory, node)
            kept += 1
        else:
            key = SigningKey.generate()
            _write_seed(path, key, exclusive=True)
            created += 1
        if history and history[-1][1] != key.verify_key:
            # never start the history again from this key: a retired key put back would
            # then be valid from seq 1, and sign again
            raise KeystoreError(f"{path} is not the newest key {registry} lists for {node} "
                                "(a retired key put back?); restore the newest one")
        entries[node] = history or [(1, key.verify_key)]
    _write_registry(directory, entries)
    return created, kept


def rotate_key(directory: Path, node_id: str, from_seq: int) -> Path | None:
    """Give ``node_id`` a new key pair valid from ``from_seq`` (the node's next seq: the
    caller holds the node's head so that no event is signed meanwhile). The old private key
    moves aside to ``<node>.key.<its from_seq>``, returned (None when the old key signed
    nothing: ``from_seq`` is its own, and it is dropped)."""
    old = load_signing_key(directory, node_id)
    registry = directory / REGISTRY_FILE
    entries = _read_entries(registry)
    history = entries.get(node_id)
    if not history:
        raise KeystoreError(f"{registry} has no key for node {node_id}; run `motcua keys init`")
    first, public = history[-1]
    if public != old.verify_key:
        raise KeystoreError(f"{directory / (node_id + '.key')} is not the newest key "
                            f"{registry} lists for {node_id}; restore the matching pair "
                            "before rotating")
    if from_seq < first:
        raise KeystoreError(f"{node_id}'s key is valid from seq {first}, but its next seq "
                            f"in this store is {from_seq}: is this the store of {node_id}?")
    aside = None
    if from_seq > first:
        aside = directory / f"{node_id}.key.{first}"
        _write_seed(aside, old, exclusive=False)
    new = SigningKey.generate()
    entries[node_id] = [(f, k) for f, k in history if f < from_seq] + [(from_seq, new.verify_key)]
    # the new seed beside the old, then the registry, then the seed in place: a signer that
    # sees the new .key finds its from_seq already there, and a crash between the last two
    # steps is finished by the next `keys init` (_finish_rotation), never undone
    pending = directory / f"{node_id}.key.new"
    _write_seed(pending, new, exclusive=False)
    _write_registry(directory, entries)
    pending.replace(directory / f"{node_id}.key")
    return aside


def _finish_rotation(directory: Path, node_id: str, newest: VerifyKey) -> None:
    """A rotation that stopped after writing the registry: its new seed waits in
    ``<node>.key.new``; put it in place when it is the key the registry names newest."""
    pending = directory / f"{node_id}.key.new"
    if not pending.exists():
        return
    try:
        seed = SigningKey(base64.b64decode(pending.read_text().strip(), validate=True))
    except ValueError:
        return
    if seed.verify_key == newest:
        pending.replace(directory / f"{node_id}.key")


def load_signing_key(directory: Path, node_id: str) -> SigningKey:
    path = directory / f"{node_id}.key"
    try:
        seed = base64.b64decode(path.read_text().strip(), validate=True)
        return SigningKey(seed)
    except FileNotFoundError:
        raise KeystoreError(f"no private key for node {node_id} at {path}; "
                            "run `motcua keys init`") from None
    except ValueError as exc:
        raise KeystoreError(f"{path}: not a base64 Ed25519 seed ({exc})") from None


def load_registry(path: Path) -> KeyRegistry:
    """Load ``registry.json`` (or the directory holding it). The registry follows the file:
    a running verifier takes in a rotated key without a restart (``FileRegistry``)."""
    if path.is_dir():
        path = path / REGISTRY_FILE
    return FileRegistry(path)


class FileRegistry(KeyRegistry):
    """A ``KeyRegistry`` read from a file and read again when the file changes: its mtime is
    looked at no more than once every ``REFRESH_SECONDS``, and at once when a check fails
    (the first event of a rotated key, before the next look). ``keys rotate`` replaces the
    file whole, so a reader never sees half of it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = _stamp(path)
        super().__init__(_read_entries(path))
        self._looked = time.monotonic()

    def refresh(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._looked < REFRESH_SECONDS:
            return False
        self._looked = now
        try:
            stamp = _stamp(self.path)
            if stamp == self._stamp:
                return False
            entries = _read_entries(self.path)
        except KeystoreError:  # gone or broken meanwhile: keep checking with the keys known
            return False
        self._stamp = stamp
        self._replace(entries)
        return True


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeystoreError(f"no key registry at {path}; run `motcua keys init`") from None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _read_entries(path: Path) -> Entries:
    try:
        raw: Any = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeystoreError(f"no key registry at {path}; run `motcua keys init`") from None
    except json.JSONDecodeError as exc:
        raise KeystoreError(f"{path}: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise KeystoreError(f"{path}: expected an object of node id -> public keys")
    try:
        return parse_entries(raw)
    except (ValueError, TypeError) as exc:
        raise KeystoreError(f"{path}: {exc}") from None


def _write_registry(directory: Path, entries: Entries) -> None:
    tmp = directory / (REGISTRY_FILE + ".tmp")
    tmp.write_text(json.dumps(KeyRegistry(entries).to_b64(), indent=1, sort_keys=True) + "\n")
    tmp.replace(directory / REGISTRY_FILE)


def _write_seed(path: Path, key: SigningKey, *, exclusive: bool) -> None:
    """Write a private seed, mode 0600; replacing a file goes through a new one renamed over
    it, so a signer reads the old seed or the new, and sees a new inode."""
    target, path = path, (path if exclusive else path.with_name(path.name + ".tmp"))
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(bytes(key)).decode("ascii") + "\n")
    if path != target:
        path.replace(target)


class Keyring:
    """Signing keys loaded on first use from a key directory (a node's service needs only
    its own; the embedded default runs all 106 nodes from one directory). A key file
    replaced by ``keys rotate`` is read again: ``for_seq`` signs with the key valid for the
    seq being written, and refuses a seq its key is not valid for."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, tuple[tuple[int, int], SigningKey, int]] = {}

    def __call__(self, node_id: str) -> SigningKey:
        """The node's current key."""
        return self._current(node_id)[0]

    def for_seq(self, node_id: str, origin_seq: int) -> SigningKey:
        key, first = self._current(node_id)
        if origin_seq < first:
            raise KeystoreError(f"node {node_id}: seq {origin_seq} is before its key's first "
                                f"seq {first}; the key was rotated and the old one signs no "
                                "more (is this the node's store?)")
        return key

    def _current(self, node_id: str) -> tuple[SigningKey, int]:
        path = self.directory / f"{node_id}.key"
        try:
            st = path.stat()
            stamp = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = (0, 0)  # load_signing_key says what is missing
        cached = self._cache.get(node_id)
        if cached is None or cached[0] != stamp:
            key = load_signing_key(self.directory, node_id)
            cached = self._cache[node_id] = (stamp, key, self._first_seq(node_id, key))
        return cached[1], cached[2]

    def _first_seq(self, node_id: str, key: SigningKey) -> int:
        """The seq ``key`` signs from, per the registry beside it (1 without one). Only
        the newest key the registry lists signs: a retired one put back signs nothing."""
        registry = self.directory / REGISTRY_FILE
        if not registry.exists():
            return 1
        history = _read_entries(registry).get(node_id, [])
        if not history:
            return 1
        first, public = history[-1]
        if public != key.verify_key:
            raise KeystoreError(f"{self.directory / (node_id + '.key')} is not the newest key "
                                f"{registry} lists for {node_id} (a retired key put back?); "
                                "it signs nothing")
        return first

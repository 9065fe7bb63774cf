"""The keystore: one Ed25519 key pair per node, and the public-key registry file.

Layout of a key directory (default ``var/keys``)::

    <node_id>.key      the node's 32-byte private seed, base64, mode 0600
    registry.json      {"node_id": "<public key, base64>", ...} for every node

In production each node keeps only its own ``.key``; ``registry.json`` is distributed to every
reader. ``init`` never overwrites an existing key: rotating a key is a deliberate act.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from pathlib import Path

from nacl.signing import SigningKey

from schemas.errors import MotcuaError
from schemas.integrity import KeyRegistry

REGISTRY_FILE = "registry.json"


class KeystoreError(MotcuaError):
    """A key file or the registry is missing or unreadable."""


def init_keystore(directory: Path, node_ids: Iterable[str]) -> tuple[int, int]:
    """Create missing key pairs and (re)write the registry. Returns (created, kept)."""
    directory.mkdir(parents=True, exist_ok=True)
    created = kept = 0
    public: dict[str, str] = {}
    for node in node_ids:
        path = directory / f"{node}.key"
        if path.exists():
            key = load_signing_key(directory, node)
            kept += 1
        else:
            key = SigningKey.generate()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(base64.b64encode(bytes(key)).decode("ascii") + "\n")
            created += 1
        public[node] = base64.b64encode(bytes(key.verify_key)).decode("ascii")
    tmp = directory / (REGISTRY_FILE + ".tmp")
    tmp.write_text(json.dumps(public, indent=1, sort_keys=True) + "\n")
    tmp.replace(directory / REGISTRY_FILE)
    return created, kept


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
    """Load ``registry.json`` (or the directory holding it)."""
    if path.is_dir():
        path = path / REGISTRY_FILE
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise KeystoreError(f"no key registry at {path}; run `motcua keys init`") from None
    except json.JSONDecodeError as exc:
        raise KeystoreError(f"{path}: not JSON ({exc})") from None
    if not isinstance(entries, dict):
        raise KeystoreError(f"{path}: expected an object of node id -> public key")
    try:
        return KeyRegistry.from_b64(entries)
    except (ValueError, TypeError) as exc:
        raise KeystoreError(f"{path}: a public key is not valid base64 Ed25519 ({exc})") from None


class Keyring:
    """Signing keys loaded on first use from a key directory (a node's service needs only
    its own; the embedded default runs all 106 nodes from one directory)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[str, SigningKey] = {}

    def __call__(self, node_id: str) -> SigningKey:
        key = self._cache.get(node_id)
        if key is None:
            key = self._cache[node_id] = load_signing_key(self.directory, node_id)
        return key

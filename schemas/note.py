"""Signed notes, checkpoints and cosignatures, after C2SP: signed-note v1.0.0,
tlog-checkpoint v1.0.0 and tlog-cosignature (its Ed25519 ``cosignature/v1``).

The audit's checkpoints are in this text form so that any verifier of those formats (Go's
``golang.org/x/mod/sumdb/note``, ``transparency-dev/formats``) can check them with the sites'
public keys (docs/audit.md):

    hungyen.motcua/site-phohien          <- origin
    184233                               <- tree size
    3q2+7w8vX8Zb...=                     <- root hash, base64
    head site-phohien 4211 9f2c...       <- extension lines
                                         <- a blank line
    — hungyen.motcua/site-phohien <base64(key ID || Ed25519 signature)>
    — hungyen.motcua/site-thaibinh/witness <base64(key ID || time || signature)>

A signature line is ``— <key name> base64(4-byte key ID || signature)``; the key ID is
SHA-256(name || "\\n" || type || public key)[:4], type 0x01 for a note signature and 0x04
for a cosignature, whose signature is an 8-byte big-endian time then the Ed25519 signature
of "cosignature/v1\\ntime <time>\\n" followed by the note's text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from schemas.errors import MotcuaError

ED25519 = 0x01  # a note signature
COSIGNATURE_V1 = 0x04  # an Ed25519 cosignature/v1
DASH = "\u2014"  # the em dash that starts a signature line
_NAME = re.compile(r"^[^\s+]+$")  # no white space, no '+'


class NoteError(MotcuaError):
    """A note, checkpoint, key or signature that is malformed or does not verify."""


def key_id(name: str, kind: int, public: bytes) -> bytes:
    """The 4-byte key ID of a key of type ``kind`` named ``name``."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([kind]) + public).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    """A public key as notes name it: ``<name>+<hex key ID>+<base64(type || key)>``."""

    name: str
    kind: int
    public: bytes

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.kind, self.public)

    def __str__(self) -> str:
        return (f"{self.name}+{self.id.hex()}+"
                f"{base64.b64encode(bytes([self.kind]) + self.public).decode()}")

    @classmethod
    def parse(cls, text: str) -> Verifier:
        name, _, rest = text.strip().partition("+")
        hex_id, _, b64 = rest.partition("+")
        try:
            raw = base64.b64decode(b64, validate=True)
            given = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError):
            raise NoteError(f"verifier key {text!r}: not <name>+<hex id>+<base64 key>") from None
        if not _NAME.match(name) or len(given) != 4 or len(raw) != 33 \
                or raw[0] not in (ED25519, COSIGNATURE_V1):
            raise NoteError(f"verifier key {text!r}: not <name>+<hex id>+<base64 of a type "
                            "byte (01 or 04) and a 32-byte Ed25519 key>")
        key = cls(name, raw[0], raw[1:])
        if key.id != given:
            raise NoteError(f"verifier key {text!r}: its key ID is {key.id.hex()}, not "
                            f"{hex_id}")
        return key


@dataclass(frozen=True)
class Signature:
    name: str
    id: bytes  # 4 bytes
    body: bytes  # what follows the key ID: a signature, or time || signature

    def line(self) -> str:
        return f"{DASH} {self.name} {base64.b64encode(self.id + self.body).decode()}\n"

    @property
    def cosigned_at(self) -> int | None:
        """The POSIX time a cosignature/v1 carries (8 bytes, then the signature); None for
        a body of another length (a note signature). Not verified: see ``verify``."""
        if len(self.body) != 72:
            return None
        return int(struct.unpack(">Q", self.body[:8])[0])


@dataclass(frozen=True)
class Note:
    """A note's text (ending in a newline) and its signature lines."""

    text: str
    signatures: tuple[Signature, ...] = ()

    def encode(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)

    @classmethod
    def parse(cls, data: str) -> Note:
        text, sep, block = data.rpartition("\n\n")
        if not sep or not text:
            raise NoteError("a signed note is its text, a blank line, then signature lines")
        signatures = []
        for line in block.split("\n"):
            if not line:
                continue
            if not line.startswith(DASH + " "):
                raise NoteError(f"not a signature line: {line[:60]!r}")
            name, _, b64 = line[2:].rpartition(" ")
            try:
                raw = base64.b64decode(b64, validate=True)
            except binascii.Error:
                raise NoteError(f"signature of {name!r} is not base64") from None
            if not _NAME.match(name) or len(raw) < 5:
                raise NoteError(f"malformed signature line: {line[:60]!r}")
            signatures.append(Signature(name, raw[:4], raw[4:]))
        if not signatures:
            raise NoteError("a signed note has at least one signature")
        return cls(text + "\n", tuple(signatures))

    def signed_by(self, key: Verifier) -> list[Signature]:
        return [s for s in self.signatures if s.name == key.name and s.id == key.id]


def sign(text: str, name: str, key: SigningKey) -> Signature:
    """A note signature (type 0x01) of ``text`` by ``key`` under ``name``."""
    _check_text(text, name)
    public = bytes(key.verify_key)
    return Signature(name, key_id(name, ED25519, public), key.sign(text.encode()).signature)


def cosign(text: str, name: str, key: SigningKey, timestamp: int) -> Signature:
    """A cosignature/v1 (type 0x04) of ``text`` at POSIX time ``timestamp``."""
    _check_text(text, name)
    if not 0 <= timestamp < 2**63:
        raise NoteError(f"cosignature time {timestamp} is out of range")
    public = bytes(key.verify_key)
    signed = key.sign(_cosigned(text, timestamp)).signature
    return Signature(name, key_id(name, COSIGNATURE_V1, public),
                     struct.pack(">Q", timestamp) + signed)


def verify(note: Note, key: Verifier) -> int | None:
    """Check ``key``'s signature on ``note``: None for a note signature, the time for a
    cosignature. Raises NoteError if the note has none by that key, or it does not hold."""
    found = note.signed_by(key)
    if not found:
        raise NoteError(f"no signature by {key.name} ({key.id.hex()}) on the note")
    sig = found[0]
    vk = VerifyKey(key.public)
    try:
        if key.kind == ED25519:
            vk.verify(note.text.encode(), sig.body)
            return None
        timestamp = sig.cosigned_at
        if timestamp is None:
            raise NoteError(f"cosignature of {key.name}: {len(sig.body)} bytes, not 8 + 64")
        vk.verify(_cosigned(note.text, timestamp), sig.body[8:])
        return timestamp
    except (BadSignatureError, ValueError):
        raise NoteError(f"the signature of {key.name} ({key.id.hex()}) does not match the "
                        "note") from None


def _cosigned(text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


def _check_text(text: str, name: str) -> None:
    if not text.endswith("\n") or "\n\n" in text or text.startswith("\n"):
        raise NoteError("a note's text is non-empty lines, each ending in a newline")
    if not _NAME.match(name):
        raise NoteError(f"key name {name!r} has white space or '+'")


@dataclass(frozen=True)
class Checkpoint:
    """A tree head: origin, size, root, and extension lines (C2SP tlog-checkpoint)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(),
                 *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or any(not line for line in lines[:-1]):
            raise NoteError("a checkpoint is an origin, a size and a root hash, then "
                            "extension lines, each ending in a newline")
        origin, size, root, *extensions = lines[:-1]
        if not re.fullmatch(r"0|[1-9][0-9]{0,19}", size):
            raise NoteError(f"checkpoint size {size!r} is not a decimal without leading zeros")
        try:
            digest = base64.b64decode(root, validate=True)
        except binascii.Error:
            raise NoteError(f"checkpoint root {root!r} is not base64") from None
        if len(digest) != 32:
            raise NoteError(f"checkpoint root has {len(digest)} bytes, not 32")
        return cls(origin, int(size), digest, tuple(extensions))

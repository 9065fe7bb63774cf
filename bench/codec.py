"""Per-event costs every consumer pays: decode (parse + validate), hash check, signature check.

Peers, on the same events in the same process: ``json.loads`` with no validation (what
skipping the schema would save) and the ``cryptography`` package's Ed25519 (the other common
choice) beside PyNaCl. One core; run with ``python -m bench.codec [N]``.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from schemas.codec import decode, encode
from schemas.integrity import verify
from tests.factories import T0, Chain, registry_of


def rate(fn: Callable[[bytes], object], items: list[bytes]) -> float:
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for item in items:
            fn(item)
        best = max(best, len(items) / (time.perf_counter() - start))
    return best


def main(n: int = 20_000) -> None:
    chain = Chain("11977")
    events = [chain.emit("dossier.received", dossier_id=f"D-11977-{i:06d}", occurred_at=T0)
              for i in range(n)]
    raws = [encode(e) for e in events]
    registry = registry_of(chain)
    decoded = [decode(r) for r in raws]
    by_raw = dict(zip(raws, decoded, strict=True))
    public = Ed25519PublicKey.from_public_bytes(bytes(chain.key.verify_key))

    def verify_nacl(raw: bytes) -> None:
        verify(by_raw[raw], registry)

    def verify_hash_only(raw: bytes) -> None:
        verify(by_raw[raw], None)

    def verify_cryptography(raw: bytes) -> None:
        event = by_raw[raw]
        public.verify(base64.b64decode(event.sig), bytes.fromhex(event.hash))

    rows = [
        ("decode (parse + validate + wire hash)", rate(decode, raws)),
        ("peer: json.loads, no validation", rate(json.loads, raws)),
        ("verify: hash compare (digest made in decode)", rate(verify_hash_only, raws)),
        ("verify hash + signature (PyNaCl)", rate(verify_nacl, raws)),
        ("peer: signature only (cryptography)", rate(verify_cryptography, raws)),
        ("decode + verify (PyNaCl), end to end",
         rate(lambda r: verify(decode(r), registry), raws)),
    ]
    start = time.perf_counter()
    for i in range(n // 4):
        chain.emit("dossier.resolved", dossier_id=f"D-{i}")
    rows.append(("seal (validate + hash + sign)", (n // 4) / (time.perf_counter() - start)))
    print(f"{n:,} dossier.received events of {len(raws[0])} bytes, one core")
    print(f"| {'operation':<44} | {'events/s':>10} |")
    print(f"|{'-' * 46}|{'-' * 12}|")
    for name, value in rows:
        print(f"| {name:<44} | {value:>10,.0f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)

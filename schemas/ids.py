"""Event ids: UUIDv7 (RFC 9562 §5.7), time-ordered so logs and indexes stay roughly sorted."""

from __future__ import annotations

import os
import time
import uuid


def new_event_id(now_ms: int | None = None) -> str:
    """A fresh UUIDv7: 48-bit Unix milliseconds, version 7, 74 random bits."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a: 12 bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & (2**62 - 1)  # rand_b: 62 bits
    return str(uuid.UUID(int=value))

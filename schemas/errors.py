"""The project's exception tree. Every error a user can cause derives from ``MotcuaError``
and carries a message that names what is wrong and where; none of them needs a traceback."""

from __future__ import annotations


class MotcuaError(Exception):
    """Root of every error motcua raises on purpose."""


class SchemaError(MotcuaError):
    """An event could not be decoded: ``field`` names where (``data.channel``, ``occurred_at``,
    or ``<bytes>`` for the whole message) and ``reason`` says what."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class IntegrityError(MotcuaError):
    """An event decoded but cannot be trusted: its hash, signature or origin is wrong."""

    def __init__(self, event_id: str, origin: str, reason: str) -> None:
        self.event_id = event_id
        self.origin = origin
        self.reason = reason
        super().__init__(f"event {event_id} from {origin}: {reason}")


class BadHash(IntegrityError):
    """The content does not hash to the ``hash`` field (tampered in transit or at rest)."""


class BadSignature(IntegrityError):
    """``sig`` is not the origin's signature over ``hash`` (forged, or signed by another key)."""


class UnknownOrigin(IntegrityError):
    """The origin has no public key in the registry."""

"""Schema versions and the upcaster hook.

Readers accept every version up to the current one of a type. An older event is rewritten,
one version at a time, by the upcaster registered for ``(type, from_version)`` before it is
validated against the current model (eventsourcing's ``upcast_v1_v2`` pattern). The event's
hash is always checked against the content as it was signed, never the upcast one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas.errors import SchemaError

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

#: Current schema_version of each event type. Bump it and register an upcaster together.
CURRENT_VERSION: dict[str, int] = {
    "dossier.received": 1,
    "dossier.status_changed": 1,
    "dossier.supplement_requested": 1,
    "dossier.deadline_extended": 1,
    "dossier.resolved": 1,
    "dossier.returned": 1,
    "dossier.withdrawn": 1,
    "dossier.refused": 1,
    "hotline.call_received": 1,
    "hotline.call_closed": 1,
}

UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def register(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register ``fn`` to rewrite ``event_type`` from ``from_version`` to ``from_version + 1``.
    The function receives the whole envelope as a dict and returns the new one."""

    def decorator(fn: Upcaster) -> Upcaster:
        UPCASTERS[(event_type, from_version)] = fn
        return fn

    return decorator


def upcast(envelope: dict[str, Any]) -> dict[str, Any]:
    """Bring ``envelope`` to the current version of its type (a no-op when it already is)."""
    event_type = envelope["type"]
    version = envelope["schema_version"]
    current = CURRENT_VERSION[event_type]
    while version < current:
        fn = UPCASTERS.get((event_type, version))
        if fn is None:
            raise SchemaError("schema_version",
                              f"no upcaster from version {version} of {event_type} "
                              f"(current is {current})")
        envelope = dict(fn(dict(envelope)))
        version += 1
        envelope["schema_version"] = version
    return envelope

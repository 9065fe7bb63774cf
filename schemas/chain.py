"""The one chain rule (DESIGN.md G6): may an event take its place in its origin's chain?

Every origin numbers its events 1, 2, 3 ... (``origin_seq``) and links each to the one
before (``prev_hash`` = that event's ``hash``; ``GENESIS_HASH`` for seq 1). A reader holds
some of those places; ``judge`` says what a newly read event is next to them:

- ``DUPLICATE``: the very event already holds its place (a redelivery);
- ``None``: it is new and fits: it may take the place;
- a reason: a fork (another event holds its place, or its event_id is held at another
  place) or a chain break (it does not link to a neighbour held).

A missing neighbour is a gap, not an error: the event is taken and checked against the
neighbour when that arrives (the neighbour is then judged against it). The first event to
take a place keeps it. The stream worker, the sync consumers, the audit archive and
``motcua schemas check`` all apply this function (a batch through ``judge_in_order``), so
they refuse the same events (``streams/processor.py``, ``consumers/sync/replica.py``,
``consumers/audit/``, ``schemas/check.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator, Mapping, MutableMapping
from typing import Final, NamedTuple, TypeVar

from schemas.events import GENESIS_HASH, AnyEvent


class Link(NamedTuple):
    """What a reader keeps of a held place: the event's hash and the hash it links to."""
    hash: str
    prev_hash: str


Place = tuple[str, int]  # (origin, origin_seq)

DUPLICATE: Final = "duplicate"


def places_around(event: AnyEvent) -> tuple[Place, Place, Place]:
    """The places ``judge`` looks at: the event's own and its two neighbours'."""
    return ((event.origin, event.origin_seq - 1), (event.origin, event.origin_seq),
            (event.origin, event.origin_seq + 1))


def judge(event: AnyEvent, held: Mapping[Place, Link], held_ids: Container[str]) -> str | None:
    """``DUPLICATE``, None (new, and it fits), or why ``event`` is refused. ``held`` holds at
    least the places of ``places_around(event)`` that are taken; ``held_ids`` the event ids
    held anywhere (or at least this one's, if it is held)."""
    origin, seq = event.origin, event.origin_seq
    here = held.get((origin, seq))
    if here is not None:
        if here.hash == event.hash:
            return DUPLICATE
        return f"fork: {origin} seq {seq} is held by another event than {event.event_id}"
    if event.event_id in held_ids:
        return f"fork: event_id {event.event_id} is held at another place than {origin} seq {seq}"
    if seq == 1 and event.prev_hash != GENESIS_HASH:
        return f"chain break: {origin} seq 1: prev_hash is not the genesis hash"
    before = held.get((origin, seq - 1))
    if before is not None and before.hash != event.prev_hash:
        return (f"chain break: {origin} seq {seq}: prev_hash does not match the hash of seq "
                f"{seq - 1}")
    after = held.get((origin, seq + 1))
    if after is not None and after.prev_hash != event.hash:
        return (f"chain break: {origin} seq {seq}: seq {seq + 1} held names another event as "
                "its predecessor")
    return None


T = TypeVar("T")


def judge_in_order(items: Iterable[T], event_of: Callable[[T], AnyEvent],
                   held: MutableMapping[Place, Link], held_ids: set[str]
                   ) -> Iterator[tuple[T, str | None]]:
    """Each of a batch's ``items`` with its verdict (``judge``), in (origin, seq) order; one
    that fits takes its place in ``held`` and ``held_ids`` before the next is judged, so
    a batch is judged as if its events had come one by one."""
    def place(item: T) -> tuple[str, int]:
        e = event_of(item)
        return e.origin, e.origin_seq
    for item in sorted(items, key=place):
        event = event_of(item)
        verdict = judge(event, held, held_ids)
        if verdict is None:
            held[(event.origin, event.origin_seq)] = Link(event.hash, event.prev_hash)
            held_ids.add(event.event_id)
        yield item, verdict

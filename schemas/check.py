"""Line-by-line validation of a JSON-lines file of events (``motcua schemas check``).

Each line must decode (schema), hash to its ``hash`` (integrity) and, when a key registry is
given, carry its origin's signature. Across lines, an origin's chain must hold where the file
has consecutive events (``prev_hash`` = hash of seq-1) and no origin_seq may be used twice
for different content (a fork: someone wrote as that origin).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from schemas.chain import DUPLICATE, Link, Place, judge, places_around
from schemas.codec import decode
from schemas.errors import MotcuaError
from schemas.events import AnyEvent
from schemas.integrity import KeyRegistry, verify


@dataclass(frozen=True)
class LineResult:
    line_no: int
    event: AnyEvent | None
    error: str | None  # None: the line is good
    duplicate: bool = False


def check_lines(lines: Iterable[bytes], registry: KeyRegistry | None = None
                ) -> Iterator[LineResult]:
    seen = _Seen()
    bad_lines: set[int] = set()
    for line_no, raw in enumerate(lines, start=1):
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            continue
        try:
            event = decode(raw)
            verify(event, registry)
        except MotcuaError as exc:
            yield LineResult(line_no, None, str(exc))
            continue
        problem, duplicate = _chain_problem(event, line_no, seen, bad_lines)
        if problem:
            bad_lines.add(line_no)
        yield LineResult(line_no, event, problem, duplicate)


def seq_gaps(seqs: dict[str, set[int]]) -> list[tuple[str, int, int]]:
    """(origin, first missing, last missing) for each run of seqs missing between 1 and the
    highest seq seen of that origin."""
    gaps = []
    for origin in sorted(seqs):
        have = seqs[origin]
        run_start = None
        for seq in range(1, max(have) + 1):
            if seq not in have and run_start is None:
                run_start = seq
            elif seq in have and run_start is not None:
                gaps.append((origin, run_start, seq - 1))
                run_start = None
    return gaps


class _Seen:
    """The places and event ids taken by the lines read so far, with their line numbers."""

    def __init__(self) -> None:
        self.places: dict[Place, tuple[Link, int]] = {}
        self.ids: dict[str, int] = {}


def _chain_problem(event: AnyEvent, line_no: int, seen: _Seen, bad_lines: set[int]
                   ) -> tuple[str | None, bool]:
    """The chain rule (``schemas.chain.judge``) against the lines already read, in whatever
    order lines come; a refusal names the lines it conflicts with."""
    here = (event.origin, event.origin_seq)
    around = [p for p in places_around(event) if p in seen.places]
    verdict = judge(event, {p: seen.places[p][0] for p in around}, seen.ids)
    if verdict == DUPLICATE:
        first_line = seen.places[here][1]
        if first_line in bad_lines:
            return f"event {event.event_id}: repeats line {first_line}, which is bad", False
        return None, True
    near = sorted({seen.places[p][1] for p in around}
                  | ({seen.ids[event.event_id]} if event.event_id in seen.ids else set()))
    if verdict is None or not verdict.startswith("fork"):
        # a broken link still takes its place: a repeat of it, or a neighbour that links to
        # it, is reported against this line
        seen.places[here] = (Link(event.hash, event.prev_hash), line_no)
        seen.ids[event.event_id] = line_no
    if verdict is not None:
        kind = "forked chain" if verdict.startswith("fork") else "broken chain"
        lines = f" (line {', '.join(map(str, near))})" if near else ""
        return f"event {event.event_id}: {verdict}{lines}: {kind}", False
    return None, False

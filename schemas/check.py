"""Line-by-line validation of a JSON-lines file of events (``motcua schemas check``).

Each line must decode (schema), hash to its ``hash`` (integrity) and, when a key registry is
given, carry its origin's signature. Across lines, an origin's chain must hold where the file
has consecutive events (``prev_hash`` = hash of seq-1) and no origin_seq may be used twice
for different content (a fork: someone wrote as that origin).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from schemas.codec import decode
from schemas.errors import MotcuaError
from schemas.events import GENESIS_HASH, AnyEvent
from schemas.integrity import KeyRegistry, verify


@dataclass(frozen=True)
class LineResult:
    line_no: int
    event: AnyEvent | None
    error: str | None  # None: the line is good
    duplicate: bool = False


def check_lines(lines: Iterable[bytes], registry: KeyRegistry | None = None
                ) -> Iterator[LineResult]:
    # (origin, seq) -> (hash, prev_hash, line number) of the first event seen there
    seen: dict[tuple[str, int], tuple[str, str, int]] = {}
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


def _chain_problem(event: AnyEvent, line_no: int, seen: dict[tuple[str, int], tuple[str, str, int]],
                   bad_lines: set[int]) -> tuple[str | None, bool]:
    """Check the links to the neighbours already seen, in whatever order lines come."""
    here = (event.origin, event.origin_seq)
    if here in seen:
        first_hash, _, first_line = seen[here]
        if first_hash == event.hash:
            if first_line in bad_lines:
                return f"event {event.event_id}: repeats line {first_line}, which is bad", False
            return None, True
        return (f"event {event.event_id}: origin {event.origin} seq {event.origin_seq} was "
                f"already used by line {first_line} with other content (forked chain)"), False
    seen[here] = (event.hash, event.prev_hash, line_no)
    if event.origin_seq == 1 and event.prev_hash != GENESIS_HASH:
        return (f"event {event.event_id}: origin {event.origin} seq 1 must have the genesis "
                "prev_hash"), False
    before = seen.get((event.origin, event.origin_seq - 1))
    if before is not None and before[0] != event.prev_hash:
        return (f"event {event.event_id}: prev_hash does not match the hash of origin "
                f"{event.origin} seq {event.origin_seq - 1} (line {before[2]}): broken chain"
                ), False
    after = seen.get((event.origin, event.origin_seq + 1))
    if after is not None and after[1] != event.hash:
        return (f"event {event.event_id}: its hash is not the prev_hash of origin "
                f"{event.origin} seq {event.origin_seq + 1} (line {after[2]}): broken chain"
                ), False
    return None, False

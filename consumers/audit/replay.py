"""``motcua audit replay``: the figures of any period recomputed from the archived events.

The events are folded and counted by ``schemas.counters.recount`` (the fold and the
counter contributions the stream worker's projector calls) and turned into figures by
``schemas.figures`` (what ``motcua counters`` and the wall boards call), so a replay and
the live figures can only differ if the events differ: that is G4. Every event of the
archive is read, not only the period's: a period's stocks (in progress at its end, the
backlog carried into it) depend on what came before it.

What is counted is the audited history: each origin's chain from seq 1 without a gap (or,
for a report, exactly the events of a cosigned checkpoint's tree, which holds only such
runs). An event archived beyond a gap in its origin's chain is held out and listed, never
counted, until the gap fills: a validly signed event whose seq leaps ahead of its origin's
head is either on its way behind others (it is counted when they arrive) or signed outside
the node's own history (a stolen key, a defect), and such an event must not move a
published figure (docs/audit.md, "Events beyond a gap").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date

from consumers.audit.store import Archive
from schemas.codec import decode
from schemas.counters import RULES_VERSION, CounterKey, is_day, recount
from schemas.events import AnyEvent
from schemas.figures import Figures, figures


@dataclass(frozen=True)
class Replay:
    counters: dict[CounterKey, int]
    events: int  # events counted
    rules: str = RULES_VERSION  # the counter rules the figures were computed by
    held: tuple[tuple[str, int], ...] = ()  # (origin, seq) archived beyond a gap, not counted

    def figures(self, scope: str, start: date, end: date) -> Figures:
        days = {(period, measure): n for (s, period, measure), n in self.counters.items()
                if s == scope and is_day(period)}
        return figures(days, scope, start, end)


def replay(archive: Archive, checkpoint: int | None = None) -> Replay:
    """The archive's audited history recounted: every origin's gapless chain, or with
    ``checkpoint`` the first that many leaves of the checkpoints' tree."""
    counted = _counted(archive, checkpoint)
    count = 0
    held: list[tuple[str, int]] = []

    def read() -> Iterator[AnyEvent]:
        nonlocal count
        for _, line in archive.read():
            event = decode(line)
            if event.origin_seq <= counted.get(event.origin, 0):
                count += 1
                yield event
            else:
                held.append((event.origin, event.origin_seq))
    counters = recount(read())
    return Replay(counters, count, held=tuple(sorted(held)))


def replay_events(events: Sequence[AnyEvent]) -> Replay:
    """The same recount over events read elsewhere (the event topics): each origin's run
    without a gap, from its lowest seq there (retention may have dropped the start)."""
    seqs: dict[str, list[int]] = {}
    for e in events:
        seqs.setdefault(e.origin, []).append(e.origin_seq)
    counted = {o: _run_end(sorted(set(s)), min(s)) for o, s in seqs.items()}
    kept = [e for e in events if e.origin_seq <= counted[e.origin]]
    held = sorted((e.origin, e.origin_seq) for e in events if e.origin_seq > counted[e.origin])
    return Replay(recount(kept), len(kept), held=tuple(held))


def _run_end(seqs: Sequence[int], first: int) -> int:
    """The last seq of the run without a gap that starts at ``first`` (seqs ascending)."""
    n = first - 1
    for seq in seqs:
        if seq != n + 1:
            break
        n = seq
    return n


def _counted(archive: Archive, checkpoint: int | None) -> dict[str, int]:
    """Per origin, the last seq counted: the end of its run from seq 1, or its head in the
    tree of ``checkpoint`` leaves (the tree only ever takes gapless runs)."""
    if checkpoint is not None:
        heads: dict[str, int] = {}
        for origin, seq, _ in archive.leaves(checkpoint):
            heads[origin] = seq
        return heads
    return {origin: _run_end(seqs, 1) for origin, seqs in archive.seqs().items()}


def differences(replayed: dict[str, object], live: dict[str, object]) -> list[str]:
    """The measures whose values differ, in ``replayed``'s order."""
    return [k for k, v in replayed.items() if k not in ("scope", "from", "to")
            and live.get(k) != v]

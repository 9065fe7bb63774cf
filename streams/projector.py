"""The stream worker's projection, in memory: each subject's distinct events, its fold and
what it adds to the counters; a batch of verified, chained events in, counter deltas out.
No SQL, Kafka or faust: a subject it does not hold is restored from what the caller read
(``streams/store.py``), so the same projection can be fed from anywhere.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from schemas.calls import CallState, apply_call
from schemas.codec import decode
from schemas.counters import Contribution, CounterKey, contribution, diff, fold_subject
from schemas.events import AnyEvent
from schemas.fold import DossierState, advance, apply

DOSSIERS = "dossier"
CALLS = "call"

SubjectKey = tuple[str, str]  # (kind, subject id)


class Subject:
    """A subject in memory: its distinct events (wire bytes), their ids and its fold."""

    __slots__ = ("contribution", "ids", "partition", "raws", "state")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.raws: list[bytes] = []
        self.ids: set[tuple[str, str]] = set()  # (event_id, hash)
        self.state: DossierState | CallState | None = None
        self.contribution: Contribution = {}


#: One tuple per counter key, shared by every subject that counts in it: a cached dossier
#: counts in ~23 keys, and as separate tuples and strings they were 1.75 kB of its ~5 kB
#: (measured with tracemalloc on a simulated week; 100,000 cached subjects, ~175 MB).
#: Emptied when large (a year has ~100,000s of keys); subjects keep the tuples they hold.
_KEYS: dict[CounterKey, CounterKey] = {}
_KEYS_MAX = 200_000


def _shared(contrib: Contribution) -> Contribution:
    if len(_KEYS) > _KEYS_MAX:
        _KEYS.clear()
    keys = _KEYS
    return {keys.setdefault(k, k): v for k, v in contrib.items()}


def _step(state: DossierState | CallState, event: AnyEvent) -> DossierState | CallState:
    return apply(state, event) if isinstance(state, DossierState) else apply_call(state, event)


class Projector:
    """Subjects kept in memory, least recently used first out beyond ``cache_size``."""

    def __init__(self, cache_size: int = 100_000) -> None:
        self.cache_size = cache_size
        self._cache: OrderedDict[SubjectKey, Subject] = OrderedDict()

    def missing(self, keys: Iterable[SubjectKey]) -> list[SubjectKey]:
        """Which of ``keys`` must be restored before ``project`` (read them from the store)."""
        return [k for k in keys if k not in self._cache]

    def restore(self, key: SubjectKey, partition: int, stored: bytes | None) -> None:
        """Hold ``key`` again, from its stored events (newline-joined wire bytes, verified
        when first taken), or empty if the store has none."""
        subject = Subject(partition)
        if stored:
            subject.raws = stored.split(b"\n")
            events = [decode(raw) for raw in subject.raws]
            subject.ids = {(e.event_id, e.hash) for e in events}
            subject.state = fold_subject(events, key[0] == CALLS)
            subject.contribution = _shared(contribution(subject.state))
        self._cache[key] = subject

    def project(self, items: Iterable[tuple[SubjectKey, AnyEvent, bytes]]
                ) -> tuple[dict[SubjectKey, Subject], dict[SubjectKey, dict[CounterKey, int]]]:
        """Fold ``items`` (every key held: ``missing`` / ``restore`` first) into their
        subjects. Returns the subjects that changed and, for those whose counters moved,
        the change. An exact duplicate changes nothing; events may come in any order."""
        touched: dict[SubjectKey, Subject] = {}
        before: dict[SubjectKey, Contribution] = {}
        for key, event, raw in items:
            subject = self._cache[key]
            self._cache.move_to_end(key)
            if key not in before:
                before[key] = subject.contribution
            if _add(key[0], subject, event, raw):
                touched[key] = subject
        deltas: dict[SubjectKey, dict[CounterKey, int]] = {}
        for key, subject in touched.items():
            new = _shared(contribution(subject.state))
            delta = diff(before[key], new)
            subject.contribution = new
            if delta:
                deltas[key] = delta
        self._trim()
        return touched, deltas

    def forget(self, partitions: set[tuple[str, int]] | None = None) -> None:
        """Drop the subjects of these (kind, partition) pairs, or all: after a revocation
        or a failed commit, the store is the only truth."""
        if partitions is None:
            self._cache.clear()
            return
        for key in [k for k, s in self._cache.items() if (k[0], s.partition) in partitions]:
            del self._cache[key]

    def _trim(self) -> None:
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


def _add(kind: str, subject: Subject, event: AnyEvent, raw: bytes) -> bool:
    """Fold one event into a subject; False for an exact duplicate."""
    ident = (event.event_id, event.hash)
    if ident in subject.ids:
        return False
    known_id = any(i == event.event_id for i, _ in subject.ids) if subject.ids else False
    subject.ids.add(ident)
    subject.raws.append(raw)
    calls = kind == CALLS

    def whole() -> DossierState | CallState | None:
        return fold_subject([decode(r) for r in subject.raws] if subject.raws[:-1]
                            else [event], calls)
    if known_id:  # an id reused by other content: only the whole set decides (fold)
        subject.state = whole()
    else:
        # mypy cannot solve the TypeVar for a union of two states
        subject.state = advance(subject.state, [event], _step, whole)  # type: ignore[arg-type, assignment]
    return True

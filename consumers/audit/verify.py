"""``motcua audit verify``: is the archive complete and untampered? (DESIGN.md G8)

Checked, and every problem named by origin and seq with its reason:

* each archived line is an event whose content matches its hash (``schemas.integrity``);
* the segments and the index agree: every event the index names is at its line of its
  segment, with the hash the index recorded, and no segment holds a line the index does
  not name (an event edited, deleted, swapped or added after it was archived; a segment cut
  short);
* every origin's seqs run 1..n without a gap, and each event's ``prev_hash`` is the hash of
  the one before (an event removed from the middle, a rewritten chain);
* signatures: ``all`` checks every event's (on every core: libsodium runs without the GIL);
  ``heads`` checks each origin's last event only. That is enough once the two checks above
  pass: each hash covers the ``prev_hash`` before it, so the signed head covers the whole
  chain below it, and changing any event means re-signing its origin's head, which needs
  that origin's private key. A stolen key is what the witnessed checkpoints are for.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import select

from consumers.audit.store import Archive, events, parse_heads, parse_prev, segments
from consumers.audit.witness import site_of
from schemas.codec import decode
from schemas.errors import MotcuaError
from schemas.events import GENESIS_HASH, AnyEvent
from schemas.integrity import KeyRegistry, check_signature, verify
from schemas.merkle import Tree, leaf_hash
from schemas.note import COSIGNATURE_V1, ED25519, Checkpoint, Note, NoteError, Verifier
from schemas.note import verify as verify_note


@dataclass(frozen=True)
class Problem:
    origin: str  # "" when a line cannot be read as an event at all
    seq: int | None
    reason: str

    def __str__(self) -> str:
        where = self.origin or "?"
        return f"{where} seq {self.seq}: {self.reason}" if self.seq is not None \
            else f"{where}: {self.reason}"


@dataclass
class Report:
    events: int = 0  # events read from the segments
    origins: int = 0
    signatures_checked: int = 0
    checkpoints: int = 0
    cosigned: int = 0  # this archive's checkpoints with a valid cosignature
    latest_cosigned: str | None = None  # the newest cosigned checkpoint's note
    witnessed: int = 0  # checkpoints of this archive a witness's own archive holds
    problems: list[Problem] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_archive(archive: Archive, registry: KeyRegistry, signatures: str = "all",
                   workers: int | None = None, audit_keys: KeyRegistry | None = None,
                   witnesses: Sequence[Archive] = ()) -> Report:
    """Everything the module docstring lists; ``signatures`` is ``all`` or ``heads``.
    With ``audit_keys`` (the sites' checkpoint keys), the archive's signed checkpoints and
    their cosignatures too; and with ``witnesses`` (the other sites' archives), the
    checkpoints of this archive each witness cosigned, from its own record."""
    problems: list[Problem] = []
    report = Report(problems=problems)
    with archive.engine.connect() as conn:
        index = {(r.path, int(r.line)): r for r in conn.execute(
            select(events.c.origin, events.c.origin_seq, events.c.hash, events.c.path,
                   events.c.line))}
        committed = [(r.path, int(r.committed_bytes), int(r.events)) for r in conn.execute(
            select(segments.c.path, segments.c.committed_bytes, segments.c.events)
            .order_by(segments.c.path))]
    chains: dict[str, dict[int, AnyEvent]] = defaultdict(dict)
    leaf_of: dict[tuple[str, int], bytes] = {}
    for path, length, count in committed:
        seen = 0
        for line_no, raw in _lines(archive, path, length, problems):
            seen += 1
            row = index.get((path, line_no))
            try:
                event = decode(raw)
                verify(event, None)  # the content matches its hash
            except MotcuaError as exc:
                origin = row.origin if row is not None else ""
                seq = int(row.origin_seq) if row is not None else None
                problems.append(Problem(origin, seq, f"{path} line {line_no + 1}: {exc}"))
                continue
            report.events += 1
            if row is None:
                problems.append(Problem(event.origin, event.origin_seq,
                                        f"{path} line {line_no + 1}: not in the index "
                                        "(added after it was archived)"))
            elif (row.origin, int(row.origin_seq), row.hash) != \
                    (event.origin, event.origin_seq, event.hash):
                problems.append(Problem(row.origin, int(row.origin_seq),
                                        f"{path} line {line_no + 1} holds {event.origin} seq "
                                        f"{event.origin_seq} ({event.hash[:12]}…), the index "
                                        f"says {row.origin} seq {row.origin_seq} "
                                        f"({row.hash[:12]}…): edited, moved or swapped"))
            if event.origin_seq in chains[event.origin]:
                problems.append(Problem(event.origin, event.origin_seq,
                                        f"{path} line {line_no + 1}: a second event at this "
                                        "place (a fork)"))
            else:
                chains[event.origin][event.origin_seq] = event
                leaf_of[(event.origin, event.origin_seq)] = leaf_hash(raw)
        if seen < count:  # the index's events past what the segment still holds
            for (p, line_no), row in sorted(index.items()):
                if p == path and line_no >= seen:
                    problems.append(Problem(row.origin, int(row.origin_seq),
                                            f"{path} line {line_no + 1}: missing (the segment "
                                            "was cut short)"))
    report.origins = len(chains)
    heads: list[AnyEvent] = []
    for origin in sorted(chains):
        chain = chains[origin]
        top = max(chain)
        heads.append(chain[top])
        missing = [s for s in range(1, top + 1) if s not in chain]
        for start, end in _runs(missing):
            problems.append(Problem(origin, start, f"seqs {start}-{end} missing (deleted, or "
                                    "never archived)" if end > start else "missing (deleted, "
                                    "or never archived)"))
        for seq, event in sorted(chain.items()):
            want = GENESIS_HASH if seq == 1 else (chain[seq - 1].hash if seq - 1 in chain
                                                  else None)
            if want is not None and event.prev_hash != want:
                problems.append(Problem(origin, seq, "prev_hash is not the hash of seq "
                                        f"{seq - 1}: the chain was broken or rewritten"))
    checked = heads if signatures == "heads" else \
        [e for origin in sorted(chains) for _, e in sorted(chains[origin].items())]
    problems.extend(check_signatures(checked, registry, workers))
    report.signatures_checked = len(checked)
    if audit_keys is not None:
        issued = archive.issued()
        report.checkpoints = verify_checkpoints(issued, chains, leaf_of, audit_keys, problems)
        _cosignatures(archive, issued, audit_keys, report, problems)
        # whose checkpoints to take from a witness: this archive's signer, or (when its own
        # were deleted) everyone's the witness holds
        signers: list[str | None] = [*sorted({o for _, _, n in issued
                                              if (o := _origin(n)) is not None})]
        signers = signers or [None]
        for witness in witnesses:
            for signer in signers:
                held = witness.witnessed_notes(signer)
                name = f"the witness archive {witness.root}"
                verify_checkpoints([(size, r, n) for _, size, r, n in held], chains, leaf_of,
                                   audit_keys, problems, name)
                report.witnessed += len(held)
                # what the witness refused to cosign: a signed checkpoint of another history
                for who, size, reason, _note in witness.witness_refusals():
                    if signer is None or who == signer:
                        problems.append(Problem("", None, f"{name} refused to cosign "
                                                f"checkpoint {size} of {who}: {reason}"))
    problems.sort(key=lambda p: (p.origin, p.seq or 0, p.reason))
    return report


def verify_checkpoints(issued: Sequence[tuple[int, str, str]],
                       chains: dict[str, dict[int, AnyEvent]],
                       leaf_of: dict[tuple[str, int], bytes], audit_keys: KeyRegistry,
                       problems: list[Problem], held_by: str = "the archive") -> int:
    """Each signed checkpoint, oldest first: its signature (the site's checkpoint key), that
    it extends the one before (its ``prev`` line), and the tree its heads name rebuilt from
    the events the segments hold now (leaves appended checkpoint by checkpoint, origins in
    order, each origin's new seqs in order). A history rewritten after a checkpoint was
    signed, even re-signed with the origins' own keys, gives another root; the origin and
    seq where it differs are named. ``held_by`` says whose record of checkpoints it is."""
    built = Tree()
    heads: dict[str, int] = {}
    for size, _root, text in issued:
        try:
            note = Note.parse(text)
            cp = Checkpoint.parse(note.text)
            site = site_of(cp.origin)
            public = audit_keys.get(site)
            if public is None:
                raise NoteError(f"no checkpoint key for {site!r}")
            verify_note(note, Verifier(cp.origin, ED25519, bytes(public)))
        except NoteError as exc:
            problems.append(Problem("", None, f"checkpoint of size {size} ({held_by}): {exc}"))
            continue
        prev = parse_prev(cp.extensions)
        if prev is not None and prev != built.size:
            problems.append(Problem("", None, f"checkpoint {cp.size} ({held_by}) extends "
                                    f"checkpoint {prev}, but the one before it is "
                                    f"{built.size}: one is missing or was replaced"))
            return len(issued)
        named = parse_heads(cp.extensions)
        broken = False
        for origin in sorted(named):
            top, head_hash = named[origin]
            for seq in range(heads.get(origin, 0) + 1, top + 1):
                leaf = leaf_of.get((origin, seq))
                if leaf is None:
                    problems.append(Problem(origin, seq, f"missing, though checkpoint "
                                            f"{cp.size} ({held_by}) covers it"))
                    broken = True
                    break
                built.append(leaf)
            held = chains.get(origin, {}).get(top)
            if held is not None and held.hash != head_hash:
                problems.append(Problem(origin, top, f"not the event checkpoint {cp.size} "
                                        f"({held_by}) signed as this origin's head: the "
                                        "chain was rewritten after it"))
            heads[origin] = top
        if broken:
            return len(issued)
        if built.size != cp.size or built.root() != cp.root:
            problems.append(Problem("", None, f"checkpoint {cp.size} ({held_by}): the "
                                    "archived events "
                                    f"give a tree of {built.size} with root "
                                    f"{built.root().hex()[:16]}…, not the signed "
                                    f"{cp.root.hex()[:16]}…"))
            return len(issued)
    return len(issued)


def _cosignatures(archive: Archive, issued: Sequence[tuple[int, str, str]],
                  audit_keys: KeyRegistry, report: Report, problems: list[Problem]) -> None:
    """Every cosignature held must be another site's valid cosignature/v1 of a checkpoint
    this archive issued, word for word."""
    issued_at = {size: note for size, _, note in issued}
    for size, witness, data in archive.cosigned():
        try:
            note = Note.parse(data)
            if size not in issued_at or Note.parse(issued_at[size]).text != note.text:
                raise NoteError("it cosigns a text this archive's checkpoint does not have "
                                "(the checkpoint was replaced after it was cosigned)")
            public = audit_keys.get(site_of(witness))
            if public is None:
                raise NoteError(f"no checkpoint key for the witness {witness!r}")
            verify_note(note, Verifier(witness, COSIGNATURE_V1, bytes(public)))
        except NoteError as exc:
            problems.append(Problem("", None, f"cosignature of checkpoint {size} by "
                                    f"{witness}: {exc}"))
            continue
        report.cosigned += 1
        report.latest_cosigned = data


def _origin(data: str) -> str | None:
    try:
        return Checkpoint.parse(Note.parse(data).text).origin
    except NoteError:
        return None  # verify_checkpoints names it


def _lines(archive: Archive, path: str, length: int, problems: list[Problem]
           ) -> Iterator[tuple[int, bytes]]:
    """The lines of a segment's committed bytes; a file cut short or corrupted is a problem
    (what can still be read is read)."""
    try:
        with (archive.root / path).open("rb") as f:
            data = f.read(length)
    except FileNotFoundError:
        problems.append(Problem(_origin_of(path), None, f"{path}: the segment file is gone"))
        return
    if len(data) < length:
        problems.append(Problem(_origin_of(path), None,
                                f"{path}: {length - len(data)} committed bytes are gone (the "
                                "segment was truncated)"))
    try:
        text = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        problems.append(Problem(_origin_of(path), None, f"{path}: not readable as gzip past "
                                f"some point ({exc}); reading what is whole"))
        text = _whole_members(data)
    yield from enumerate(line for line in text.split(b"\n") if line)


def _whole_members(data: bytes) -> bytes:
    """The content of the leading gzip members that decompress whole."""
    out = []
    while data:
        d = zlib.decompressobj(wbits=31)
        try:
            out.append(d.decompress(data))
        except zlib.error:
            break
        if not d.eof:
            break
        data = d.unused_data
    return b"".join(out)


def _origin_of(path: str) -> str:
    parts = path.split("/")
    return parts[1] if len(parts) > 2 else ""


def _runs(seqs: Sequence[int]) -> Iterator[tuple[int, int]]:
    start = prev = None
    for s in seqs:
        if start is None:
            start = prev = s
        elif s == prev + 1:  # type: ignore[operator]
            prev = s
        else:
            yield start, prev  # type: ignore[misc]
            start = prev = s
    if start is not None:
        yield start, prev  # type: ignore[misc]


def check_signatures(checked: Sequence[AnyEvent], registry: KeyRegistry, workers: int | None
                     ) -> list[Problem]:
    """Each event's signature by its origin, on ``workers`` threads (default: every core;
    libsodium runs without the GIL)."""
    return [Problem(e.origin, e.origin_seq, reason)
            for e, reason in bad_signatures(checked, registry, workers)]


def bad_signatures(checked: Sequence[AnyEvent], registry: KeyRegistry, workers: int | None
                   ) -> list[tuple[AnyEvent, str]]:
    """The events among ``checked`` whose signature does not hold, and why."""
    def chunk(part: Sequence[AnyEvent]) -> list[tuple[AnyEvent, str]]:
        out = []
        for event in part:
            try:
                check_signature(event, registry)
            except MotcuaError as exc:
                out.append((event, str(exc)))
        return out
    n = max(1, workers or os.cpu_count() or 1)
    size = max(1, -(-len(checked) // (n * 4)))
    parts = [checked[i:i + size] for i in range(0, len(checked), size)]
    with ThreadPoolExecutor(n) as pool:
        return [p for found in pool.map(chunk, parts) for p in found]

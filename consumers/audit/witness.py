"""The other site as witness: check a site's signed checkpoint against this archive's own
events, and cosign it only if it extends the last one cosigned (docs/audit.md).

Each provincial site keeps its own archive of the same topics. For a checkpoint of the other
site, the witness:

1. checks the signer's signature with the signer's checkpoint key;
2. takes the frontier of the last tree it cosigned for that signer (``schemas.merkle.
   Frontier``), appends the leaves of its OWN archived events from each origin's last
   cosigned head up to the head the checkpoint names (origins in order, as the signer
   builds its tree), and checks that every named head's hash is the one it holds and that
   the result has the checkpoint's size and root.

Step 2 is a consistency check that needs no proof from the signer: the new tree is built as
the old one plus appended leaves, so a root that matches can only be an extension of the
root cosigned before. It is stronger than an RFC 9162 consistency proof, which shows only
that the old tree is a prefix: the witness also knows each appended leaf is an event it
received itself. Hence the witness never cosigns:

* a checkpoint its own archive contradicts (an origin's head with another hash: another
  history, such as a chain rewritten with a stolen origin key);
* a second root for a size it cosigned, or any tree that does not extend the last one it
  cosigned (a fork: the signer showed it, or someone else, another history);
* a smaller tree after a larger one.

Each refusal is kept with its reason and the signed note: two signed checkpoints that
contradict each other are the proof that the signer forked. A checkpoint naming events the
witness has not archived yet waits until it has them; so does one whose predecessor (the
``prev`` line) the witness has not seen yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from nacl.signing import SigningKey

from consumers.audit.store import Archive, parse_heads, parse_prev
from schemas.integrity import KeyRegistry
from schemas.merkle import Frontier
from schemas.note import ED25519, Checkpoint, Note, NoteError, Verifier, cosign
from schemas.note import verify as verify_note

COSIGNED, KNOWN, WAIT, REFUSED, STALE = "cosigned", "known", "wait", "refused", "stale"
ORIGIN_PREFIX = "hungyen.motcua/"


def checkpoint_name(site: str) -> str:
    """The origin line (and key name) of a site's checkpoints."""
    return ORIGIN_PREFIX + site


def site_of(name: str) -> str:
    return name.removeprefix(ORIGIN_PREFIX)


@dataclass(frozen=True)
class Verdict:
    outcome: str  # COSIGNED, KNOWN, WAIT, REFUSED or STALE
    signer: str
    size: int
    reason: str = ""
    note: str | None = None  # the cosigned note (COSIGNED)


class Witness:
    """Witnesses other sites' checkpoints as ``name`` with ``key``, against ``archive``."""

    def __init__(self, archive: Archive, name: str, key: SigningKey,
                 audit_keys: KeyRegistry) -> None:
        self.archive = archive
        self.name = name
        self.key = key
        self.audit_keys = audit_keys

    def check(self, data: str, now: int | None = None) -> Verdict:
        """Judge one published checkpoint; cosign and record it if it holds (see the
        module docstring). Refusals are recorded too."""
        try:
            note = Note.parse(data)
            cp = Checkpoint.parse(note.text)
            public = self.audit_keys.get(site_of(cp.origin))
            if not cp.origin.startswith(ORIGIN_PREFIX) or public is None:
                raise NoteError(f"{cp.origin!r} is not a provincial site with a checkpoint "
                                "key")
            verify_note(note, Verifier(cp.origin, ED25519, bytes(public)))
        except NoteError as exc:
            return Verdict(REFUSED, "?", 0, f"not a checkpoint signed by a site: {exc}")
        signer, root = cp.origin, cp.root.hex()
        if self.archive.was_witnessed(signer, cp.size, root):
            return Verdict(KNOWN, signer, cp.size)
        last = self.archive.last_witnessed(signer)
        size0, root0, frontier, heads0 = last or (0, Frontier().root().hex(),
                                                  Frontier().text(), {})
        judged = self._judge(cp, size0, root0, Frontier.parse(frontier), heads0)
        at = datetime.now(UTC).isoformat(timespec="seconds")
        if isinstance(judged, Verdict):
            if judged.outcome == REFUSED:
                self.archive.record_witness_refusal(signer, cp.size, root, judged.reason,
                                                    data, at)
            return judged
        stamp = int(datetime.now(UTC).timestamp()) if now is None else now
        cosigned = Note(note.text, (*note.signatures,
                                    cosign(note.text, self.name, self.key, stamp))).encode()
        self.archive.record_witnessed(signer, cp.size, root, judged.text(), cosigned, at)
        return Verdict(COSIGNED, signer, cp.size, note=cosigned)

    def _judge(self, cp: Checkpoint, size0: int, root0: str, frontier: Frontier,
               heads0: dict[str, int]) -> Verdict | Frontier:
        """The refusal, or why to wait; or the frontier of the tree, which holds."""
        signer, prev = cp.origin, parse_prev(cp.extensions)
        if cp.size < size0:
            return Verdict(STALE, signer, cp.size, f"smaller than the tree of {size0} "
                           "already cosigned")
        if cp.size == size0:
            return Verdict(REFUSED, signer, cp.size, f"a second root for size {size0}: "
                           f"{cp.root.hex()[:16]}…, cosigned was {root0[:16]}… (a fork)")
        if prev is not None and prev > size0:
            return Verdict(WAIT, signer, cp.size, f"it extends checkpoint {prev}, not seen "
                           f"yet (last cosigned: {size0})")
        if prev is not None and prev < size0:
            return Verdict(REFUSED, signer, cp.size, f"it extends checkpoint {prev}, but "
                           f"{size0} was cosigned since (a fork)")
        named = parse_heads(cp.extensions)
        for origin, seq in sorted(heads0.items()):
            if origin not in named or named[origin][0] < seq:
                return Verdict(REFUSED, signer, cp.size, f"{origin}: its head went back "
                               f"from seq {seq} to {named.get(origin, (0, ''))[0]} since "
                               f"checkpoint {size0} (a fork)")
        for origin in sorted(named):
            top, head_hash = named[origin]
            first = heads0.get(origin, 0) + 1
            leaves, held = self.archive.leaf_run(origin, first, top)
            if held is not None and held != head_hash:
                return Verdict(REFUSED, signer, cp.size, f"{origin} seq {top}: the "
                               f"checkpoint names hash {head_hash[:12]}…, this archive "
                               f"holds {held[:12]}… (another history)")
            if len(leaves) < top - first + 1:
                return Verdict(WAIT, signer, cp.size, f"{origin} seq "
                               f"{first + len(leaves)} is not archived here yet")
            for leaf in leaves:
                frontier.append(leaf)
        if frontier.size != cp.size or frontier.root() != cp.root:
            return Verdict(REFUSED, signer, cp.size, f"the tree it names is not the one "
                           f"cosigned at size {size0} extended with this archive's events "
                           f"(that gives {frontier.size} leaves, root "
                           f"{frontier.root().hex()[:16]}…)")
        return frontier

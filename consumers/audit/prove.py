"""``motcua audit prove DOSSIER_ID``: a dossier's events, each with an RFC 9162 inclusion
proof against the archive's newest cosigned checkpoint, in one JSON document that anyone
can check with the sites' public keys (``check_proof``, ``motcua audit check``):

1. the checkpoint's note carries the signer's signature and a witness's cosignature;
2. each event's leaf is SHA-256(0x00 ‖ its bytes as archived);
3. each proof leads from that leaf, at its index, to the checkpoint's root.

The events themselves carry their origin's signature; the document names their origin and
seq, so a checker with the node keys can verify those too (``schemas.integrity``).
"""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import select

from consumers.audit.store import Archive, events, tree
from consumers.audit.witness import site_of
from schemas.errors import MotcuaError
from schemas.integrity import KeyRegistry
from schemas.merkle import Tree, leaf_hash, verify_inclusion
from schemas.note import COSIGNATURE_V1, ED25519, Checkpoint, Note, NoteError, Verifier
from schemas.note import verify as verify_note

FORMAT = "motcua-inclusion-proof/v1"


def prove(archive: Archive, dossier_id: str) -> dict[str, Any]:
    """The proof document of ``dossier_id`` (module docstring)."""
    held = archive.cosigned()
    if not held:
        raise MotcuaError(f"no checkpoint of the archive in {archive.root} is cosigned yet: "
                          "nothing to prove against (is the other site's archive running?)")
    size, _, note = held[-1]
    e, t = events.c, tree.c
    with archive.engine.connect() as conn:
        rows = conn.execute(select(e.origin, e.origin_seq, e.path, e.line, e.occurred_at,
                                   t.leaf_index)
                            .join(tree, (t.origin == e.origin) & (t.origin_seq == e.origin_seq),
                                  isouter=True)
                            .where(e.subject_id == dossier_id)
                            .order_by(e.occurred_at, e.origin, e.origin_seq)).all()
    if not rows:
        raise MotcuaError(f"no archived event of dossier {dossier_id!r} in {archive.root}")
    built = Tree()
    for _, _, leaf in archive.leaves(size):
        built.append(leaf)
    lines = _lines(archive, {(r.path, int(r.line)) for r in rows})
    proven, pending = [], []
    for r in rows:
        raw = lines[(r.path, int(r.line))]
        where = {"origin": r.origin, "origin_seq": int(r.origin_seq),
                 "event": raw.decode("utf-8")}
        if r.leaf_index is None or int(r.leaf_index) >= size:
            pending.append(where)
            continue
        index = int(r.leaf_index)
        proof = built.inclusion_proof(index, size)
        proven.append({**where, "leaf_index": index,
                       "proof": [base64.b64encode(h).decode() for h in proof]})
    return {"format": FORMAT, "dossier_id": dossier_id, "checkpoint": note,
            "events": proven, "not_yet_checkpointed": pending}


def _lines(archive: Archive, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], bytes]:
    out: dict[tuple[str, int], bytes] = {}
    paths = {p for p, _ in wanted}
    line_of: dict[str, int] = {}
    for path, raw in archive.read(paths):
        n = line_of.get(path, 0)
        line_of[path] = n + 1
        if (path, n) in wanted:
            out[(path, n)] = raw
    return out


def check_proof(doc: dict[str, Any], audit_keys: KeyRegistry) -> list[str]:
    """Check a proof document with the sites' public keys; returns what holds, one line
    each, or raises MotcuaError naming what does not."""
    try:
        if doc.get("format") != FORMAT:
            raise MotcuaError(f"not a {FORMAT} document")
        note = Note.parse(doc["checkpoint"])
        cp = Checkpoint.parse(note.text)
        said = []
        for sig in note.signatures:
            public = audit_keys.get(site_of(sig.name))
            if public is None:
                continue
            kind = ED25519 if sig.name == cp.origin else COSIGNATURE_V1
            verify_note(note, Verifier(sig.name, kind, bytes(public)))
            said.append(f"{'signed' if kind == ED25519 else 'cosigned'} by {sig.name}")
        if not any(s.startswith("signed") for s in said) or \
                not any(s.startswith("cosigned") for s in said):
            raise MotcuaError(f"the checkpoint needs its signer's signature and a witness's "
                              f"cosignature; it has: {', '.join(said) or 'neither'}")
        for ev in doc["events"]:
            leaf = leaf_hash(ev["event"].encode("utf-8"))
            proof = [base64.b64decode(h, validate=True) for h in ev["proof"]]
            try:
                verify_inclusion(int(ev["leaf_index"]), cp.size, leaf, proof, cp.root)
            except MotcuaError as exc:
                raise MotcuaError(f"{ev['origin']} seq {ev['origin_seq']}: {exc}") from None
            said.append(f"{ev['origin']} seq {ev['origin_seq']}: leaf {ev['leaf_index']} of "
                        f"{cp.size}, proof holds")
        return said
    except NoteError as exc:
        raise MotcuaError(f"the checkpoint does not hold: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MotcuaError(f"the proof document is malformed: {type(exc).__name__}: {exc}"
                          ) from None

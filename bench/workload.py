"""Workloads for the benchmarks: a simulated period (cached under var/bench), and the same
lifecycles multiplied by re-sealing each event as another dossier."""

from __future__ import annotations

import pickle
from datetime import date, timedelta
from pathlib import Path

from schemas.codec import decode, encode
from schemas.events import GENESIS_HASH
from schemas.integrity import seal
from schemas.keys import Keyring

CACHE = Path("var/bench")


def simulated(days: int, scale: float, seed: int = 3
              ) -> tuple[Path, list[tuple[str, bytes, bytes]]]:
    """(key directory, records in outbox order) of ``days`` simulated days from 1 July 2025,
    simulated once and kept in var/bench (the simulator takes about a minute a week)."""
    from tests.streams_support import simulate

    where = CACHE / f"sim-{days}d-{scale}-{seed}"
    saved = where / "records.pickle"
    if not saved.exists():
        where.mkdir(parents=True, exist_ok=True)
        work = simulate(where, date(2025, 7, 1), date(2025, 7, 1) + timedelta(days=days - 1),
                        scale=scale, seed=seed)
        saved.write_bytes(pickle.dumps(work.records))
    return where / "keys", pickle.loads(saved.read_bytes())  # noqa: S301 - our own file


def multiplied(keys_dir: Path, records: list[tuple[str, bytes, bytes]], copies: int
               ) -> list[tuple[str, bytes, bytes]]:
    """``records`` and ``copies - 1`` more of them, each event re-sealed by its origin for a
    dossier ``<id>.<copy>``: new event ids, each origin's chain continued, same times."""
    keys = Keyring(keys_dir)
    events = [(topic, decode(value)) for topic, _, value in records]
    heads: dict[str, tuple[int, str]] = {}
    out = list(records)
    for _, e in events:
        heads[e.origin] = max(heads.get(e.origin, (0, GENESIS_HASH)), (e.origin_seq, e.hash))
    for copy in range(1, copies):
        for topic, e in events:
            seq, head = heads[e.origin]
            subject = f"{e.dossier_id}.{copy}"
            new = seal(type(e), origin=e.origin, origin_seq=seq + 1, prev_hash=head,
                       dossier_id=subject, occurred_at=e.occurred_at, data=e.data,
                       key=keys(e.origin))
            heads[e.origin] = (new.origin_seq, new.hash)
            out.append((topic, subject.encode(), encode(new)))
    return out

"""Peer: the same counters written with Quix Streams.

Same decode, same fold and same contribution functions as motcua (schemas/), in Quix's
stateful dataframe: per dossier (the topic key) its events and contribution live in Quix
state; the deltas are re-keyed by counter and summed in a second stateful step. No
signature check (compare with motcua's --no-verify row). Prints one JSON line when it has
seen ``want`` source events.

Run by bench/streams.py: ``python -m bench.peers.quix_count BOOTSTRAP TOPIC WANT STATE_DIR``.
"""

from __future__ import annotations

import base64
import pickle
import sys
from typing import Any

from quixstreams import State

from bench.peers import count, quix_app
from schemas.codec import decode
from schemas.counters import diff, dossier_contribution
from schemas.errors import MotcuaError
from schemas.fold import DossierState, apply, event_key, fold


def main(bootstrap: str, topic_name: str, want: int, state_dir: str) -> None:
    app = quix_app(bootstrap, f"peer-quix-{topic_name}", state_dir)
    topic = app.topic(topic_name, value_deserializer="bytes", key_deserializer="str")
    seen: dict[str, float] = {"n": 0, "first": 0.0}

    def fold_one(value: bytes, state: State[Any, Any]) -> list[dict[str, Any]]:
        count(seen, want)
        try:
            event = decode(value)
        except MotcuaError:
            return []
        ids: list[str] = state.get("ids", [])
        ident = f"{event.event_id}|{event.hash}"
        if ident in ids:
            return []
        raws: list[str] = state.get("raws", [])
        pickled = state.get("state")
        folded: DossierState | None = (None if pickled is None
                                       else pickle.loads(base64.b64decode(pickled)))  # noqa: S301 - own state
        known_id = any(i.startswith(event.event_id + "|") for i in ids)
        if folded is not None and folded.last_key is not None \
                and event_key(event) > folded.last_key and not known_id:
            folded = apply(folded, event)
        else:  # same rule as motcua: anything that sorts earlier re-folds the set
            folded = fold([*(decode(r) for r in raws), event])
        ids.append(ident)
        raws.append(value.decode())
        old = {tuple(k.split("|")): v for k, v in state.get("contribution", {}).items()}
        new = dossier_contribution(folded)
        state.set("ids", ids)
        state.set("raws", raws)
        state.set("state", base64.b64encode(pickle.dumps(folded)).decode())
        state.set("contribution", {"|".join(k): v for k, v in new.items()})
        return [{"key": "|".join(k), "delta": d} for k, d in diff(old, new).items()]

    def add(row: dict[str, Any], state: State[Any, Any]) -> int:
        total = int(state.get("total", 0)) + row["delta"]
        state.set("total", total)
        return int(total)

    sdf = app.dataframe(topic)
    sdf = sdf.apply(fold_one, stateful=True, expand=True)
    sdf = sdf.group_by(lambda row: row["key"], name="counter")
    sdf = sdf.apply(add, stateful=True)
    app.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])

"""Peer: a bare Quix Streams count per key, the issue's yardstick for the unverified worker.

No decode, no fold: each record's key gets ``count += 1`` in Quix state (RocksDB). Prints one
JSON line when it has seen ``want`` records (bench/peers.report).

Run by bench/engine.py: ``python -m bench.peers.quix_bare BOOTSTRAP TOPIC WANT STATE_DIR``.
"""

from __future__ import annotations

import sys
from typing import Any

from quixstreams import State

from bench.peers import count, quix_app


def main(bootstrap: str, topic_name: str, want: int, state_dir: str) -> None:
    app = quix_app(bootstrap, f"peer-quix-bare-{topic_name}", state_dir)
    topic = app.topic(topic_name, value_deserializer="bytes", key_deserializer="bytes")
    seen: dict[str, float] = {"n": 0, "first": 0.0}

    def add_one(value: bytes, state: State[Any, Any]) -> int:
        count(seen, want)
        total = int(state.get("count", 0)) + 1
        state.set("count", total)
        return total

    app.dataframe(topic).apply(add_one, stateful=True)
    app.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])

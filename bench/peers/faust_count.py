"""Peer: plain faust counting (group_by + Table, no fold), the way a faust tutorial counts.

Counts dossier.received per (day, channel) with the same decode as motcua, one event at a
time through faust's per-event path. Prints one JSON line when it has seen ``want`` events.

Run by bench/streams.py: ``python -m bench.peers.faust_count BOOTSTRAP TOPIC WANT DATA_DIR``.
"""

from __future__ import annotations

import sys

import faust

from bench.peers import count as tick
from infra.broker import free_port
from schemas.codec import decode
from schemas.errors import MotcuaError


def main(bootstrap: str, topic_name: str, want: int, data_dir: str) -> None:
    app = faust.App(f"peer-faust-{topic_name}", broker=f"kafka://{bootstrap}",
                    value_serializer="raw", key_serializer="raw",
                    broker_session_timeout=2.0, broker_heartbeat_interval=0.5,
                    consumer_auto_offset_reset="earliest", web_enabled=False,
                    web_port=free_port(), web_bind="127.0.0.1", topic_partitions=12,
                    store="memory://", datadir=data_dir)
    source = app.topic(topic_name, key_type=bytes, value_type=bytes, internal=False)
    counts = app.Table("received", default=int)
    seen: dict[str, float] = {"n": 0, "first": 0.0}

    def by_day_channel(value: bytes) -> str:
        try:
            event = decode(value)
        except MotcuaError:
            return "invalid"
        if event.type != "dossier.received":
            return "other"
        return f"{event.local_date}|{event.data.channel.value}"

    @app.agent(source, concurrency=1)
    async def count(stream: faust.StreamT[bytes]) -> None:
        async for value in stream.group_by(by_day_channel, name="by-day-channel"):
            counts[by_day_channel(value)] += 1
            tick(seen, want)

    worker = faust.Worker(app, loglevel="ERROR", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])

"""Peers for bench/streams.py, each run as its own process on the same events."""

from __future__ import annotations

import json
import time
from typing import Any


def report(seen: dict[str, float], want: int) -> None:
    """A progress line at most every second, and one when ``want`` events were seen: the
    benchmark can then tell a slow peer from a stalled one."""
    now = time.perf_counter()
    if seen["n"] == want or now - seen.get("said", 0.0) >= 1.0:
        seen["said"] = now
        print(json.dumps({"events": seen["n"], "seconds": now - seen["first"],
                          "done": seen["n"] >= want}), flush=True)


def count(seen: dict[str, float], want: int) -> None:
    """One more event seen: start the clock at the first, report progress."""
    if not seen["n"]:
        seen["first"] = time.perf_counter()
    seen["n"] += 1
    report(seen, want)


def quix_app(bootstrap: str, group: str, state_dir: str) -> Any:
    """A Quix Streams application reading from the earliest record (both Quix peers)."""
    from quixstreams import Application

    return Application(broker_address=bootstrap, consumer_group=group,
                       auto_offset_reset="earliest", state_dir=state_dir,
                       consumer_extra_config={"session.timeout.ms": 6000})

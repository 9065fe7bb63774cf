"""Peers for bench/streams.py, each run as its own process on the same events."""

from __future__ import annotations

import json
import time


def report(seen: dict[str, float], want: int) -> None:
    """A progress line at most every second, and one when ``want`` events were seen: the
    benchmark can then tell a slow peer from a stalled one."""
    now = time.perf_counter()
    if seen["n"] == want or now - seen.get("said", 0.0) >= 1.0:
        seen["said"] = now
        print(json.dumps({"events": seen["n"], "seconds": now - seen["first"],
                          "done": seen["n"] >= want}), flush=True)

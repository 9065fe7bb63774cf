"""Process plumbing every long-running command shares (platform: no Settings here)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any


class StopSignals:
    """While entered, SIGINT, SIGTERM and SIGHUP ask for a stop instead of raising, so a
    stop request that comes while things are still starting is honoured once they have
    started, and everything is then stopped in order."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self._event = threading.Event()
        self._received: list[str] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self._received.append(signal.Signals(signum).name)
        self._event.set()

    def wait(self, tick: Callable[[], None] | None = None, every: float = 30.0,
             watch: Callable[[], str | None] | None = None) -> str:
        """Block until a stop signal; returns its name. ``tick`` runs every ``every``
        seconds meanwhile (a status line); ``watch`` every half second, and a reason it
        returns ends the wait too (something vital died)."""
        next_tick = time.monotonic() + every
        while not self._event.wait(0.5):
            if watch is not None and (reason := watch()):
                return reason
            if tick is not None and time.monotonic() >= next_tick:
                tick()
                next_tick += every
        return self._received[0]


class Loop:
    """``target(stop)`` running on a daemon thread until ``stop`` is set: the relay, a sync
    consumer, the simulator. Several loops may share one ``stop``, as ``motcua up``'s do."""

    def __init__(self, target: Callable[[threading.Event], None], name: str,
                 stop: threading.Event | None = None) -> None:
        self.stop = stop if stop is not None else threading.Event()
        self.thread = threading.Thread(target=target, args=(self.stop,), name=name,
                                       daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float = 30.0) -> None:
        """Wait for the loop to end (after ``stop`` was set, by this or a sibling)."""
        self.thread.join(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Ask the loop to stop and wait for it, up to ``timeout`` seconds (it is a daemon:
        one that does not end in time does not keep the process alive)."""
        self.stop.set()
        self.join(timeout)

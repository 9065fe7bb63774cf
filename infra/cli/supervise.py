"""The children ``motcua up`` runs (stream worker, display, archives, sync consumers):
started as ``motcua <args>`` with their output in ``<data dir>/log/<name>.log``, restarted
with backoff when one dies, and recorded for ``motcua status`` (infra/cli/ops.py).

A child that dies is started again after 1 s, then 2, 4 ... up to 60 s if it keeps dying;
one that ran a minute or more before dying starts the count again. Each death and restart
is said on ``up``'s output with the child's exit status and the last line of its log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from infra.broker import die_with_parent, free_port, port_in_use
from infra.cli.ops import Proc, write_state
from infra.metrics import Metrics
from infra.settings import Settings
from schemas.errors import MotcuaError

Say = Callable[[str], None]

MAX_BACKOFF = 60.0
STEADY = 60.0  # a child that ran this long before dying was not crash-looping


@dataclass
class Child:
    name: str
    args: list[str]
    log: Path
    metrics_port: int
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    restarts: int = 0
    backoff: float = 1.0
    due: float | None = None  # when a dead child is started again
    last_exit: int | None = None
    last_exit_at: float | None = None
    started_at: float = field(default_factory=time.time)  # wall clock, for `status`

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


class Supervisor:
    """Starts, watches and stops ``up``'s children; ``metrics`` (``up``'s own, served on
    ``own_port``) counts the restarts."""

    def __init__(self, settings: Settings, bootstrap: str, say: Say) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.say = say
        self.metrics = Metrics("relay")
        self.own_port: int | None = None
        self.children: list[Child] = []
        self.log_dir = settings.data_dir.resolve() / "log"
        self._next_port = settings.metrics_port

    def next_port(self) -> int:
        """The next of ``MOTCUA_METRICS_PORT``, + 1, + 2, ...; a taken one is replaced by a
        free port (a second ``up``, a test), which ``motcua status`` then reads."""
        port = self._next_port
        self._next_port += 1
        host = self.settings.metrics_host
        try:
            return free_port(host) if port_in_use(host, port) else port
        except OSError as exc:  # e.g. a host name that is no address of this machine
            raise MotcuaError(f"MOTCUA_METRICS_HOST={host}: no port to listen on there "
                              f"({exc}); give an address of this machine") from None

    def start(self, name: str, args: list[str]) -> Child:
        port = self.next_port()
        log = self.log_dir / f"{name}.log"
        child = Child(name, args, log, port, self._spawn(args, log, port))
        self.children.append(child)
        self.record()
        return child

    def _spawn(self, args: list[str], log: Path, port: int) -> subprocess.Popen[bytes]:
        """``motcua <args> --metrics-port P`` as a child that dies with us (even on kill
        -9), its output appended to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MOTCUA_KAFKA_BOOTSTRAP": self.bootstrap}
        # the children see a bootstrap; keep the group timing of the broker really in use
        env.setdefault("MOTCUA_GROUP_SESSION_TIMEOUT_MS",
                       str(self.settings.group_config()["session_timeout_ms"]))
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "infra.cli", *args, "--metrics-port", str(port)],
                env=env, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent)  # only calls prctl: safe before exec

    def check(self) -> None:
        """Every half second: say which child died, start again those whose time came."""
        now = time.monotonic()
        changed = False
        for child in self.children:
            if child.due is None and not child.running:
                ran = now - child.started
                if ran >= STEADY:
                    child.backoff = 1.0
                child.last_exit, child.last_exit_at = child.proc.returncode, time.time()
                child.due = now + child.backoff
                self.say(f"{child.name}: EXITED with status {child.proc.returncode} after "
                         f"{ran:.0f} s ({last_line(child.log)}); starting it again in "
                         f"{child.backoff:g} s (log {child.log})")
                child.backoff = min(child.backoff * 2, MAX_BACKOFF)
                changed = True
            elif child.due is not None and now >= child.due:
                child.proc = self._spawn(child.args, child.log, child.metrics_port)
                child.started, child.due, child.started_at = now, None, time.time()
                child.restarts += 1
                self.metrics.restarted(child.name)
                self.say(f"{child.name}: started again, pid {child.proc.pid} (restart "
                         f"{child.restarts})")
                changed = True
        if changed:
            self.record()

    def record(self) -> None:
        procs = [Proc("up (relay, simulator)", os.getpid(), self.own_port,
                      str(self.log_dir.parent), 0)]
        procs += [Proc(c.name, c.proc.pid if c.running else None, c.metrics_port,
                       str(c.log), c.restarts, c.last_exit, c.last_exit_at, c.started_at)
                  for c in self.children]
        try:
            write_state(self.settings, procs, self.bootstrap)
        except OSError as exc:  # status is a convenience: never stop the system for it
            self.say(f"note: could not write the process list for `motcua status` ({exc})")

    def stop_all(self) -> None:
        """Every child, in reverse order of start, each within 20 s (then killed)."""
        for child in reversed(self.children):
            child.due = None
            stop_child(child.proc)
        self.record()  # no pids left for `motcua status` to mistake for ours
        self.children.clear()


def stop_child(child: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(grace)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


def last_line(log: Path, limit: int = 200) -> str:
    """The last non-empty line of a child's log (where it says why it stopped)."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines()
                     if ln.strip()]
    except OSError:
        return "no log"
    if not lines:
        return "nothing in its log"
    text = lines[-1].strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"

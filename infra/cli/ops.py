"""What an operator runs beside the pipeline: ``--metrics-port`` of every long-running
command, and ``motcua status``, one screen of every process ``motcua up`` runs.

``motcua up`` writes ``<data dir>/run/up.json``: each process with its pid, metrics port,
log file, restarts and last exit. ``status`` reads it and asks each process's ``/metrics``
and ``/readyz`` (infra/metrics.py), so what it shows is what Prometheus would see.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from infra.cli.args import tcp_port
from infra.metrics import Metrics, serve
from infra.settings import Settings
from schemas.errors import MotcuaError

Say = Callable[[str], None]


def add_metrics_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=tcp_port, metavar="PORT",
                        help="serve /metrics (Prometheus), /healthz (alive) and /readyz "
                             "(caught up) on 127.0.0.1:PORT (MOTCUA_METRICS_HOST for another "
                             "address); default: none")


def start_metrics(settings: Settings, process: str, port: int | None) -> Metrics:
    """The process's metrics, served when ``port`` is given."""
    metrics = Metrics(process, ready_lag_seconds=settings.ready_lag_seconds)
    serve(metrics, port, settings.metrics_host)
    return metrics


# -- what `motcua up` records -------------------------------------------------------------

@dataclass
class Proc:
    """One process ``motcua up`` runs (``up`` itself holds the relay and the simulator)."""

    name: str
    pid: int | None
    metrics_port: int | None
    log: str | None
    restarts: int = 0
    last_exit: int | None = None
    last_exit_at: float | None = None
    started_at: float = field(default_factory=time.time)


def state_file(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "run" / "up.json"


def write_state(settings: Settings, procs: list[Proc], bootstrap: str) -> None:
    path = state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"up_pid": os.getpid(), "bootstrap": bootstrap,
                               "written_at": time.time(),
                               "processes": [asdict(p) for p in procs]}, indent=1))
    tmp.replace(path)  # atomic: status never reads half a file


def read_state(settings: Settings) -> dict[str, Any]:
    path = state_file(settings)
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise MotcuaError(f"no `motcua up` has run with the data folder {path.parent.parent} "
                          f"(no {path}); start it, or set MOTCUA_DATA_DIR to the folder "
                          "`motcua up` uses") from None
    except (OSError, ValueError) as exc:
        raise MotcuaError(f"{path}: unreadable ({exc})") from None
    return state


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def probe(port: int, timeout: float = 2.0, host: str = "127.0.0.1") -> dict[str, Any]:
    """A process's own view: readiness, last error (``/status``) and its motcua_ metrics
    (summed over labels other than ``process``; dead letters also by reason)."""
    base = f"http://{host}:{port}"
    try:
        with urllib.request.urlopen(base + "/status", timeout=timeout) as resp:  # noqa: S310
            own = json.loads(resp.read())
        out: dict[str, Any] = {"ready": own["ready"], "ready_why": own["ready_why"],
                               "last_error": own["last_error"]}
    except (OSError, urllib.error.URLError, ValueError, KeyError, TypeError) as exc:
        return {"unreachable": f"{base}: {getattr(exc, 'reason', exc)}"}
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=timeout) as resp:  # noqa: S310
            text = resp.read().decode()
    except (OSError, urllib.error.URLError) as exc:
        return {**out, "unreachable": f"{base}/metrics: {getattr(exc, 'reason', exc)}"}
    values: dict[str, float] = {}
    dead: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("motcua_"):
                continue
            out.setdefault("process", sample.labels.get("process"))
            if sample.name == "motcua_dead_letters_total":
                reason = sample.labels.get("reason", "")
                dead[reason] = dead.get(reason, 0) + sample.value
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    out["metrics"] = values
    out["dead_letters_by_reason"] = dead
    return out


def target_rows(path: Path) -> list[dict[str, Any]]:
    """The processes of a deployment, from a Prometheus file_sd targets file (YAML or
    JSON: infra/deploy/prometheus/targets-host.yml): each one that answers is running."""
    import yaml

    shape = "a list of {targets: [host:port, ...]}"
    try:
        groups = yaml.safe_load(path.read_text())
        if not isinstance(groups, list) or not all(
                isinstance(g, dict) and isinstance(g.get("targets"), list) for g in groups):
            raise TypeError(f"expected {shape}")
        targets = [str(t) for g in groups for t in g["targets"]]
    except OSError as exc:
        raise MotcuaError(f"--targets {path}: {exc.strerror}") from None
    except (yaml.YAMLError, TypeError) as exc:
        raise MotcuaError(f"--targets {path}: not a Prometheus targets file ({shape}): "
                          f"{str(exc).splitlines()[0]}") from None
    if not targets:
        raise MotcuaError(f"--targets {path}: no targets in it")
    rows = []
    for target in targets:
        host, _, port = target.rpartition(":")
        if not port.isdigit():
            raise MotcuaError(f"--targets {path}: {target!r} is not host:port")
        row: dict[str, Any] = {"name": target, "pid": None, "metrics_port": int(port)}
        row.update(probe(int(port), host=host or "127.0.0.1"))
        row["running"] = "unreachable" not in row
        if row.get("process"):
            row["name"] = f"{row['process']} ({target})"
        rows.append(row)
    return rows


def status_rows(settings: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    state = read_state(settings)
    procs = state.get("processes")
    if not isinstance(procs, list) or not all(isinstance(p, dict) and "name" in p
                                              for p in procs):
        raise MotcuaError(f"{state_file(settings)}: not the process list `motcua up` writes; "
                          "start `motcua up` again to rewrite it")
    host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "::", "") else (  # noqa: S104
        settings.metrics_host)
    up_running = _alive(state.get("up_pid"))
    rows = []
    for proc in procs:
        row = dict(proc)
        # with `up` gone its children went too: their old pids may be someone else's now
        row["running"] = up_running and _alive(proc.get("pid"))
        if row["running"] and proc.get("metrics_port"):
            row.update(probe(proc["metrics_port"], host=host))
        rows.append(row)
    return state, rows


def _cell(row: dict[str, Any]) -> list[str]:
    m = row.get("metrics", {})
    age = m.get("motcua_snapshot_age_seconds")
    lag_e, lag_s = m.get("motcua_lag_events"), m.get("motcua_lag_seconds")
    if not row["running"]:
        state = "[red]DOWN[/red]"
    elif "unreachable" in row:
        state = "[yellow]no metrics[/yellow]"
    else:
        state = "[green]ready[/green]" if row.get("ready") else "[yellow]catching up[/yellow]"
    error = row.get("unreachable") or ""
    if row.get("last_exit") is not None:
        error = (f"last exit {row['last_exit']} at "
                 f"{time.strftime('%H:%M:%S', time.localtime(row['last_exit_at']))}"
                 + (f"; {error}" if error else ""))
    if not error and row.get("ready") is False:
        error = row.get("ready_why", "")
    if not error and row.get("last_error"):
        error = f"{row['last_error']['age_s']:,.0f} s ago: {row['last_error']['message']}"
    dead = m.get("motcua_dead_letters_total", 0)
    return [row["name"], str(row.get("pid") or "-"), state,
            "-" if lag_e is None else f"{lag_e:,.0f}",
            "-" if lag_s is None else f"{lag_s:,.1f}",
            "-" if age is None or age != age else f"{age:,.0f} s",  # NaN: none yet
            f"{m.get('motcua_events_out_total', 0):,.0f}", f"{dead:,.0f}",
            str(row.get("restarts", 0)), error]


def cmd_status(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    state: dict[str, Any]
    if args.targets is not None:
        state = {"bootstrap": settings.kafka_bootstrap, "up_pid": None}
        rows = target_rows(args.targets)
    else:
        state, rows = status_rows(settings)
    if args.json:
        say(json.dumps({"bootstrap": state.get("bootstrap"), "up_pid": state.get("up_pid"),
                        "up_running": _alive(state.get("up_pid")), "processes": rows},
                       indent=1, default=str))
        return 1 if any(not r["running"] for r in rows) else 0
    from rich.console import Console
    from rich.table import Table

    title = (f"targets of {args.targets}" if args.targets is not None else
             f"motcua up (pid {state.get('up_pid')}"
             + ("" if _alive(state.get("up_pid")) else ", NOT RUNNING") + ")")
    table = Table(title=f"{title}, broker {state.get('bootstrap')}", title_justify="left")
    for col, right in (("process", False), ("pid", True), ("state", False),
                       ("lag events", True), ("lag s", True), ("snapshot age", True),
                       ("done", True), ("dead letters", True), ("restarts", True),
                       ("last error", False)):
        table.add_column(col, justify="right" if right else "left",
                         overflow="fold" if col == "last error" else "ellipsis")
    for row in rows:
        table.add_row(*_cell(row))
    console = Console(width=None if os.isatty(1) else 160)
    console.print(table)
    return 1 if any(not r["running"] for r in rows) else 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], say: Say) -> None:
    p = sub.add_parser("status", help="every process `motcua up` runs on one screen: state, "
                       "lag in events and seconds, snapshot age, dead letters, restarts, "
                       "last error")
    p.add_argument("--json", action="store_true", help="the same as JSON")
    p.add_argument("--targets", type=Path, metavar="FILE",
                   help="a deployment's processes instead of `motcua up`'s: a Prometheus "
                        "targets file (infra/deploy/prometheus/targets-host.yml)")
    p.set_defaults(func=lambda a, s: cmd_status(a, s, say))

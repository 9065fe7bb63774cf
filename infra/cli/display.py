"""``motcua display``: the wall boards' web server (consumers/display)."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable

from infra import logs
from infra.cli.args import hours, tcp_port
from infra.cli.bootstrap import provision
from infra.cli.ops import add_metrics_port, start_metrics
from infra.settings import Settings
from schemas.errors import MotcuaError
from schemas.topics import COUNTERS

Say = Callable[[str], None]


def board_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104 - a name
    return f"http://{shown}:{port}/board/province"


def _check_port(host: str, port: int) -> None:
    """A clear error now, rather than uvicorn's log line and exit after start-up."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise MotcuaError(f"cannot listen on {host}:{port} ({exc.strerror}); give "
                              "--port or set MOTCUA_DISPLAY_PORT") from None


def cmd_display(args: argparse.Namespace, settings: Settings, say: Say) -> int:
    import uvicorn

    from consumers.display.app import DisplayConfig, create_app

    host = args.host or settings.display_host
    port = args.port if args.port is not None else settings.display_port
    _check_port(host, port)
    provision(settings, settings.bootstrap, lambda _line: None)
    metrics = start_metrics(settings, "display", args.metrics_port)
    logs.setup("WARNING", settings.log_format, metrics.kafka_trouble)
    app = create_app(DisplayConfig(
        settings.kafka_config(settings.bootstrap), settings.topic_prefix + COUNTERS,
        reload_hours=args.reload_hours if args.reload_hours is not None
        else settings.display_reload_hours,
        metrics=metrics))
    say(f"display: boards at {board_url(host, port)} (all boards: http://{host}:{port}/)")
    # the event streams end on SIGTERM (the hub closes them); 2 s is the backstop after
    # which uvicorn cancels whatever is still open
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                  access_log=False, timeout_graceful_shutdown=2)).run()
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], say: Say) -> None:
    p = sub.add_parser("display", help="serve the live wall boards (web, server-sent events)")
    p.add_argument("--host", help="address to listen on (default MOTCUA_DISPLAY_HOST, "
                                  "127.0.0.1; 0.0.0.0 for the office LAN)")
    p.add_argument("--port", type=tcp_port,
                   help="port, 1-65535 (default MOTCUA_DISPLAY_PORT, 8080)")
    p.add_argument("--reload-hours", type=hours, metavar="HOURS",
                   help="pages reload themselves every HOURS hours, 0-720 (default "
                   "MOTCUA_DISPLAY_RELOAD_HOURS, 0: never)")
    add_metrics_port(p)
    p.set_defaults(func=lambda a, s: cmd_display(a, s, say))

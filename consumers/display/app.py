"""The display server: kiosk pages, live server-sent events and a JSON API (Starlette).

* ``/``: the list of boards; ``/board/province``, ``/board/site/<id>``,
  ``/board/commune/<gso>``: the boards (the page's script draws them from the events);
* ``/events?board=…``: SSE. The first message (``board``) is the whole board, then only the
  sections that changed (``change``); every one carries ``id:`` = the number of counters
  records read, so a browser that reconnects with ``Last-Event-ID`` (or ``?last=``) at the
  current position gets only what follows, and any other gets the whole board again: never
  a gap. ``status`` every few seconds tells the page how fresh the data is; a comment
  heartbeat every 15 s, and ``retry:``, keep proxies and browsers patient;
* ``/api/figures?scope=&from=&to=``: the JSON of ``motcua counters --json``;
* ``/api/board?board=…``: the whole board, once; ``/healthz``: health.

Read-only, no personal data (the counters hold none), a strict Content-Security-Policy (no
inline script or style, nothing from elsewhere), 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sse_starlette import ServerSentEvent
from sse_starlette.sse import AppStatus
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consumers.display.board import BoardId, Boards, UnknownBoard, all_boards, board_id
from consumers.display.feed import Feed
from infra.metrics import Metrics
from infra.process import Loop
from schemas.events import LOCAL_TZ
from schemas.office import week_sessions

log = logging.getLogger("motcua.display")

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
RETRY_MS = 2000  # a browser's wait before it reconnects by itself
HEARTBEAT_S = 15.0
QUEUE = 64  # changes held for a slow client; past that it gets the whole board again
BEHIND = None  # in a client's inbox: it fell behind, send the whole board
CLOSE = -1  # in a client's inbox: end the stream
Inbox = asyncio.Queue[tuple[int, bytes] | None | int]


def _replace(queue: Inbox, item: int | None) -> None:
    """Empty ``queue`` and leave ``item`` alone in it (an end already asked for stays)."""
    while not queue.empty():
        if queue.get_nowait() == CLOSE:
            item = CLOSE
    queue.put_nowait(item)


def close(queue: Inbox) -> None:
    """Tell the stream reading ``queue`` to end."""
    _replace(queue, CLOSE)


@dataclass(frozen=True)
class DisplayConfig:
    kafka_config: dict[str, Any]
    topic: str  # the counters topic (with its prefix)
    reload_hours: float = 0.0  # the page reloads itself every N hours (0: never)
    status_every: float = 5.0  # seconds between two ``status`` events
    tick: float = 0.1  # the broadcaster's longest wait for news
    amber_s: float = 30.0  # silence (within office time) before a board turns amber
    red_s: float = 120.0  # and red
    office: tuple[tuple[tuple[str, str], ...], ...] | None = None  # None: schemas.office
    metrics: Metrics | None = None  # what the feed reports to /metrics (infra/metrics.py)


def _today() -> date:
    return datetime.now(LOCAL_TZ).date()


class Hub:
    """Board views and their subscribers. Views are recomputed only for boards someone
    watches, when their scopes moved; each subscriber gets the sections that changed."""

    def __init__(self, boards: Boards, lock: threading.Lock,
                 stopping: Callable[[], bool] = lambda: AppStatus.should_exit) -> None:
        self.boards = boards
        self.lock = lock
        # SIGTERM: sse-starlette's hook on uvicorn's exit handler notes it process-wide
        self.stopping = stopping
        self.views: dict[str, tuple[int, dict[str, Any]]] = {}
        self.subscribers: dict[str, set[Inbox]] = {}
        self.wake = asyncio.Event()
        self.stale: set[str] = set()  # boards whose cached view is out of date
        self.closing = False  # the server is stopping: every stream ends

    def current(self, board: BoardId) -> tuple[int, dict[str, Any]]:
        """(position, whole view) of a board, recomputed if out of date. The cached view of
        a watched board is the broadcaster's alone to replace: it is what the next change
        is computed against, so a view computed here for a newcomer is not stored."""
        with self.lock:
            self._absorb_changes()
        cached = self.views.get(board.name)
        if cached is not None and board.name not in self.stale:
            return cached
        fresh = self._compute(board)
        if cached is None or not self.subscribers.get(board.name):
            self.views[board.name] = fresh
            self.stale.discard(board.name)
        return fresh

    def _compute(self, board: BoardId) -> tuple[int, dict[str, Any]]:
        with self.lock:
            return self.boards.records, self.boards.view(board, _today())

    def _refresh(self, board: BoardId) -> tuple[int, dict[str, Any]]:
        """The broadcaster's recomputation: (position, sections changed since the cached
        view); the new view becomes the cached one."""
        old = self.views.get(board.name, (0, {}))[1]
        position, view = self.views[board.name] = self._compute(board)
        self.stale.discard(board.name)
        return position, {k: v for k, v in view.items() if old.get(k) != v}

    def subscribe(self, board: BoardId) -> Inbox:
        queue: Inbox = asyncio.Queue(QUEUE)
        self.subscribers.setdefault(board.name, set()).add(queue)
        if self.closing:
            close(queue)
        return queue

    def unsubscribe(self, board: BoardId, queue: Inbox) -> None:
        self.subscribers.get(board.name, set()).discard(queue)

    def _close_all(self) -> None:
        self.closing = True
        for queues in self.subscribers.values():
            for queue in queues:
                close(queue)

    @property
    def clients(self) -> int:
        return sum(len(q) for q in self.subscribers.values())

    def _absorb_changes(self) -> None:
        """Mark the boards the moved scopes feed (under the lock)."""
        changed = self.boards.take_changed()
        if not changed:
            return
        for name in list(self.views):
            board = board_id(name)
            if "*" in changed or board.kind == "province" or board.scope in changed:
                self.stale.add(name)

    async def run(self, tick: float) -> None:
        """Push each watched board's changed sections to its subscribers; end every
        stream when the server stops."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self.wake.wait()
            self.wake.clear()
            if not self.closing and self.stopping():
                # uvicorn waits for open responses before it stops, and an event stream
                # never ends by itself
                self._close_all()
            with self.lock:
                self._absorb_changes()
            for name in [n for n in self.stale if self.subscribers.get(n)]:
                position, diff = self._refresh(board_id(name))
                if not diff:
                    continue
                # one SSE frame for every subscriber: dumping a province board's change per
                # client took most of the server's time with 1,000 clients (bench.display)
                frame = ServerSentEvent(json.dumps(diff, ensure_ascii=False), event="change",
                                        id=str(position)).encode()
                for queue in list(self.subscribers[name]):
                    try:
                        queue.put_nowait((position, frame))
                    except asyncio.QueueFull:  # a slow client: the whole board, later
                        _replace(queue, BEHIND)
            await asyncio.sleep(0)


def _page(title: str, body: str, *, lang: str = "vi", attrs: str = "") -> str:
    return (f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title>"
            f'<link rel="stylesheet" href="/static/fonts.css">'
            f'<link rel="stylesheet" href="/static/board.css"></head>'
            f"<body {attrs}>{body}</body></html>")


def _not_found(what: str) -> HTMLResponse:
    body = ('<main class="notfound"><h1>Không tìm thấy bảng này</h1>'
            f"<p>{html.escape(what)}</p><h2>No such board</h2>"
            '<p><a href="/">Danh sách bảng · All boards</a></p></main>')
    return HTMLResponse(_page("Không tìm thấy · Not found", body), status_code=404)


def create_app(config: DisplayConfig) -> Starlette:
    boards = Boards()
    lock = threading.Lock()
    state: dict[str, Any] = {}

    def now_ms() -> int:
        return int(time.time() * 1000)

    def status() -> dict[str, Any]:
        feed: Feed = state["feed"]
        age = None if feed.last_record_at is None else round(time.time() - feed.last_record_at,
                                                               1)
        return {"server_time": now_ms(), "caught_up": feed.caught_up,
                "connected": feed.connected, "records": boards.records,
                "last_record_age_s": age, "error": feed.last_error}

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        hub = Hub(boards, lock)
        loop = asyncio.get_running_loop()

        def wake() -> None:  # from the feed's thread
            loop.call_soon_threadsafe(hub.wake.set)
        feed = Feed(config.kafka_config, config.topic, boards, lock, on_change=wake,
                    metrics=config.metrics)
        state.update(hub=hub, feed=feed)
        runner = Loop(feed.run, "display-feed")  # starts it
        task = asyncio.create_task(hub.run(config.tick))
        try:
            yield
        finally:
            task.cancel()
            await asyncio.to_thread(runner.close, 10)

    async def index(_request: Request) -> HTMLResponse:
        items = "".join(f'<li><a href="/board/{b.name}">{html.escape(b.title)}</a>'
                        f"<span>{b.name}</span></li>" for b in all_boards())
        body = ('<main class="index"><h1>Bảng theo dõi · Wall boards</h1>'
                f'<ul class="boards">{items}</ul></main>')
        return HTMLResponse(_page("motcua · Bảng theo dõi", body))

    async def board_page(request: Request) -> HTMLResponse:
        name = request.path_params["name"]
        try:
            board = board_id(name)
        except UnknownBoard as exc:
            return _not_found(str(exc))
        lang = "en" if request.query_params.get("lang") == "en" else "vi"
        office = week_sessions() if config.office is None else config.office
        attrs = (f'data-board="{html.escape(board.name)}" data-lang="{lang}" '
                 f'data-reload-hours="{config.reload_hours:g}" '
                 f'data-amber="{config.amber_s:g}" data-red="{config.red_s:g}" '
                 f"data-office='{html.escape(json.dumps(office))}' class=\"kiosk\"")
        body = ('<div id="app"><p class="loading">Đang tải… · Loading…</p></div>'
                '<script src="/static/board.js"></script>')
        return HTMLResponse(_page(board.title, body, lang=lang, attrs=attrs))

    async def api_board(request: Request) -> JSONResponse:
        try:
            board = board_id(request.query_params.get("board", "province"))
        except UnknownBoard as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        position, view = state["hub"].current(board)
        return JSONResponse({"position": position, **view, "status": status()})

    async def api_figures(request: Request) -> JSONResponse:
        q = request.query_params
        try:
            scope = board_id(q.get("scope", "province")).scope
            end = date.fromisoformat(q["to"]) if q.get("to") else _today()
            start = date.fromisoformat(q["from"]) if q.get("from") else end.replace(day=1)
            if end < start:
                raise ValueError(f"to {end} is before from {start}")
        except (UnknownBoard, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        with lock:
            fig = boards.figures(scope, start, end)
        return JSONResponse(fig.as_dict())

    async def healthz(_request: Request) -> JSONResponse:
        s = status()
        ok = s["connected"] and s["caught_up"]
        return JSONResponse({"status": "ok" if ok else "degraded", **s,
                             "skipped": boards.skipped, "clients": state["hub"].clients},
                            status_code=200 if ok else 503)

    async def favicon(_request: Request) -> Response:
        return Response(status_code=204)  # no icon: and no 404 in the kiosk's console

    async def not_found(request: Request, _exc: Exception) -> Response:
        return _not_found(request.url.path)

    routes = [
        Route("/", index),
        Route("/board/{name:path}", board_page),
        Route("/events", EventStream(state, config, status)),
        Route("/api/board", api_board),
        Route("/api/figures", api_figures),
        Route("/healthz", healthz),
        Route("/favicon.ico", favicon),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     middleware=[Middleware(SecurityHeaders)],
                     exception_handlers={404: not_found})


class EventStream:
    """``GET /events?board=…``: server-sent events, as plain ASGI.

    sse-starlette's response (an anyio cancel scope and task group per stream, a cancel
    scope per message) cost more than the rest of the server with 1,000 boards open
    (bench.display): this writes the hub's frame, encoded once (sse-starlette's
    ``ServerSentEvent``), straight to each client. The first message is the whole board
    unless the client's ``Last-Event-ID`` (or ``?last=``) is the current position; then
    changes; ``status`` every ``status_every`` s; a comment heartbeat every 15 s."""

    def __init__(self, state: dict[str, Any], config: DisplayConfig,
                 status: Callable[[], dict[str, Any]]) -> None:
        self.state = state
        self.config = config
        self.status = status

    def _status(self, retry: bool = False) -> bytes:
        return ServerSentEvent(json.dumps(self.status()), event="status",
                               retry=RETRY_MS if retry else None).encode()

    @staticmethod
    def _board(position: int, view: dict[str, Any], retry: bool = False) -> bytes:
        return ServerSentEvent(json.dumps(view, ensure_ascii=False), event="board",
                               id=str(position), retry=RETRY_MS if retry else None).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        try:
            board = board_id(request.query_params.get("board", "province"))
        except UnknownBoard as exc:
            await JSONResponse({"error": str(exc)}, status_code=404)(scope, receive, send)
            return
        hub: Hub = self.state["hub"]
        last = request.headers.get("last-event-id") or request.query_params.get("last")
        queue = hub.subscribe(board)

        async def watch() -> None:  # the client went away: end the stream
            while (await receive())["type"] != "http.disconnect":
                pass
            close(queue)
        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no")]})
            position, view = hub.current(board)
            first = self._board(position, view, retry=True) if last != str(position) else b""
            await self._send(send, first + self._status(retry=True))
            sent = position
            now = time.monotonic()
            status_due, ping_due = now + self.config.status_every, now + HEARTBEAT_S
            while True:
                now = time.monotonic()
                if now >= status_due:
                    await self._send(send, self._status())
                    status_due = now + self.config.status_every
                if now >= ping_due:
                    await self._send(send, PING)
                    ping_due = now + HEARTBEAT_S
                try:
                    # asyncio.timeout, not wait_for: wait_for wraps the get in a task of
                    # its own, for every message to every client
                    async with asyncio.timeout(min(status_due, ping_due) - now):
                        item = await queue.get()
                except TimeoutError:
                    continue
                if item == CLOSE:
                    break
                if item is BEHIND:  # it fell behind: the whole board
                    sent, view = hub.current(board)
                    await self._send(send, self._board(sent, view))
                elif isinstance(item, tuple) and item[0] > sent:
                    sent = item[0]
                    await self._send(send, item[1])
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the connection broke under a write
            pass
        finally:
            watcher.cancel()
            hub.unsubscribe(board, queue)

    @staticmethod
    async def _send(send: Send, data: bytes) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": True})


PING = ServerSentEvent(comment="heartbeat", retry=RETRY_MS).encode()


class SecurityHeaders:
    """CSP and friends on every response. Plain ASGI: Starlette's BaseHTTPMiddleware wraps
    the body of a streaming response, which an endless event stream does not suit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
            await send(message)

        await self.app(scope, receive, send_with_headers)

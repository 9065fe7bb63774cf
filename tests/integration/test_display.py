"""The wall boards (consumers/display, issue 12) on a real broker, a real stream worker and
a real browser (Debian's chromium through Playwright): the figures equal `motcua counters`,
a commit shows within G7's second, a silent pipeline turns the board amber then red and
says why, and a restarted server is rejoined by the open page without a reload."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from sse_starlette.sse import AppStatus

from consumers.display.app import CSP, DisplayConfig, create_app
from infra.broker import free_port
from producers.migrate import open_store
from producers.relay import Relay
from producers.service import DossierService
from schemas.events import LOCAL_TZ
from schemas.keys import Keyring, init_keystore
from schemas.nodes import node_ids
from schemas.snapshot import Snapshot, scope_figures
from schemas.topics import COUNTERS
from streams.reader import read_snapshots
from tests.conftest import Broker
from tests.integration.test_broker import MOTCUA, cli_env
from tests.streams_support import WorkerProcess, produce, provision, simulate
from tests.timing import Deadline, budget, poll_until

CHROMIUM = "/usr/bin/chromium"
ALWAYS_OPEN = tuple((("00:00", "24:00"),) for _ in range(7))  # judged at any hour of the test
COMMUNE = "11977"


def ms(seconds: float) -> float:
    """A wait for Playwright, in milliseconds: ``budget(seconds)`` (tests/timing.py)."""
    return budget(seconds) * 1000


class DisplayServer:
    """The display app under uvicorn on a thread of this process."""

    def __init__(self, config: DisplayConfig, port: int) -> None:
        self.config = config
        self.port = port
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DisplayServer:
        # sse-starlette notes a SIGTERM in one process-wide flag that ends every event
        # stream (so `motcua display` stops at once); a server stopped earlier in this
        # process left it set, and the next server's streams would end as they began.
        AppStatus.should_exit = False
        self.server = uvicorn.Server(uvicorn.Config(
            create_app(self.config), host="127.0.0.1", port=self.port, log_level="warning",
            access_log=False, timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        server, thread = self.server, self.thread

        def started() -> bool:
            assert thread.is_alive(), "the display server exited at start"
            return bool(server.started)
        poll_until(started, 20, "the display server to start", interval=0.05)
        return self

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            # as SIGTERM does: sse-starlette then ends the open event streams at once
            self.server.handle_exit(signal.SIGTERM, None)
            self.thread.join(budget(15))
            assert not self.thread.is_alive(), \
                f"the display server did not stop in {budget(15):.0f} s"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=budget(10))

    def wait_caught_up(self, records: int, timeout: float = 30) -> None:
        """Until the server has read at least ``records`` counters records, within
        ``budget(timeout)``."""
        deadline = Deadline(timeout, f"the display to read {records} counters records")
        while True:
            body = self.get("/healthz").json()
            if body["caught_up"] and body["records"] >= records:
                return
            assert not deadline.expired(), deadline.message(str(body))
            time.sleep(0.1)


@pytest.fixture
def prefix(kafka_config: dict[str, Any]) -> str:
    name = f"d{uuid.uuid4().hex[:8]}."
    provision(kafka_config, name)
    return name


@pytest.fixture
def display(kafka_config: dict[str, Any], prefix: str) -> Iterator[Callable[..., DisplayServer]]:
    started: list[DisplayServer] = []

    def start(port: int | None = None, **options: Any) -> DisplayServer:
        config = DisplayConfig(kafka_config, prefix + COUNTERS,
                               **{"status_every": 1.0, "office": ALWAYS_OPEN, **options})
        server = DisplayServer(config, port or free_port()).start()
        started.append(server)
        return server
    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One chromium for this module. Not for the session: Playwright's sync API keeps an
    event loop running on the main thread while it is open, and asyncio.run() (aiokafka's
    probe in later tests) refuses to start beside it."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium "
                    "(.ci/services.sh)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    context.close()
    assert not errors, f"script errors on the page: {errors}"


#: Notes, in the page, the wall-clock time each received count first showed.
SEEN = """() => {
  window.__seen = {};
  const note = () => {
    const e = document.querySelector("[data-k='today.received']");
    if (e && !(e.textContent in window.__seen)) window.__seen[e.textContent] = Date.now();
  };
  new MutationObserver(note).observe(document.getElementById("app"),
                                     {childList: true, subtree: true, characterData: true});
  note();
}"""


def vi(n: int) -> str:
    """A count as a Vietnamese board writes it (201.034)."""
    return f"{n:,}".replace(",", ".")


def vi_rate(rate: str) -> str:
    """A rate as a Vietnamese board writes it (83,55%)."""
    return rate.replace(".", ",") + "%"


def snapshot_record(scope: str, day: str, partition: int, offset: int,
                    measures: dict[str, int]) -> tuple[str, bytes, bytes]:
    snap = Snapshot(scope, day, ("dossier-events", partition), offset, measures, "test",
                    datetime.now(UTC).isoformat())
    return (COUNTERS, snap.key.encode(), snap.encode())


def sse(server: DisplayServer, board: str, last: str | None = None, want: int = 2,
        timeout: float = 10, first: threading.Event | None = None) -> list[dict[str, str]]:
    """The first ``want`` events of ``/events`` (comments skipped), as field dicts; reads
    wait at most ``budget(timeout)``. ``first`` is set once the first event is in."""
    headers = {"Last-Event-ID": last} if last is not None else {}
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    with httpx.stream("GET", f"{server.url}/events?board={board}", headers=headers,
                      timeout=budget(timeout)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if current:
                    events.append(current)
                    current = {}
                    if first is not None:
                        first.set()
                    if len(events) >= want:
                        break
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")
    return events


# --- protocol and safety (no browser) ------------------------------------------------------

def test_events_start_with_the_whole_board_and_resume_from_last_event_id(
        kafka_config: dict[str, Any], prefix: str,
        display: Callable[..., DisplayServer]) -> None:
    day = "2025-07-01"
    produce(kafka_config, prefix, [snapshot_record("province", day, 0, 5, {"received": 4,
                                                                          "received.online": 3})])
    server = display()
    server.wait_caught_up(1)
    first = sse(server, "province")
    assert first[0]["event"] == "board" and first[0]["retry"] == "2000"
    board = json.loads(first[0]["data"])
    assert board["today"]["received"] == 4 and board["today"]["online_rate"] == "75.00"
    position = first[0]["id"]
    assert first[1]["event"] == "status"
    # reconnecting at the position it has: no whole board again, only what follows
    again = sse(server, "province", last=position, want=1)
    assert again[0]["event"] == "status"
    # behind (or from a server that restarted): the whole board, never a gap
    behind = sse(server, "province", last="0", want=1)
    assert behind[0]["event"] == "board"
    # a change after the first message is sent as the changed sections, with a later id
    received: list[dict[str, str]] = []
    listening = threading.Event()

    def listen() -> None:
        received.extend(sse(server, "province", want=4, timeout=20, first=listening))
    listener = threading.Thread(target=listen)
    listener.start()
    # the change must come after the listener's first message (the whole board)
    assert listening.wait(budget(10)), "the listener got no first message"
    produce(kafka_config, prefix, [snapshot_record("province", day, 0, 9, {"received": 6,
                                                                          "received.online": 6})])
    listener.join(budget(25))
    changes = [e for e in received if e.get("event") == "change"]
    assert changes, f"no change event: {received}"
    change = json.loads(changes[0]["data"])
    assert change["today"]["received"] == 6 and "chart" in change
    assert "ranking" not in change  # no commune moved: unchanged sections are not sent
    assert int(changes[0]["id"]) > int(position)


def test_bad_input_gets_a_clear_answer_and_garbage_on_the_topic_is_skipped(
        kafka_config: dict[str, Any], prefix: str,
        display: Callable[..., DisplayServer]) -> None:
    produce(kafka_config, prefix, [(COUNTERS, b"x", b"{not json"), (COUNTERS, b"y", b"[]"),
                                   snapshot_record("commune:11977", "2025-07-01", 1, 3,
                                                   {"received": 2}),
                                   snapshot_record("province", "2025-07-01", 1, 3,
                                                   {"received": 2})])
    server = display()
    server.wait_caught_up(4)
    health = server.get("/healthz")
    assert health.status_code == 200
    assert health.json()["skipped"] == 2 and health.json()["status"] == "ok"
    board = server.get(f"/api/board?board=commune/{COMMUNE}").json()
    assert board["today"]["received"] == 2
    missing = server.get("/board/commune/99999")
    assert missing.status_code == 404
    assert "Không tìm thấy bảng này" in missing.text and "No such board" in missing.text
    assert server.get("/events?board=nowhere").status_code == 404
    bad = server.get("/api/figures?scope=province&from=2025-07-09&to=2025-07-01")
    assert bad.status_code == 400 and "before" in bad.json()["error"]
    assert server.get("/api/figures?scope=commune:123").status_code == 400
    page = server.get("/board/province")
    assert page.headers["content-security-policy"] == CSP
    assert "<script>" not in page.text and " style=" not in page.text  # nothing inline
    assert '<script src="/static/board.js">' in page.text


def test_stopping_the_server_ends_every_open_stream_cleanly(
        kafka_config: dict[str, Any], prefix: str,
        display: Callable[..., DisplayServer]) -> None:
    """SIGTERM: the hub ends each event stream with the proper end of its body, at once.
    uvicorn waits for open responses before it stops; without that it would cut them
    after its grace period (1 s here), which a client sees as a broken read."""
    produce(kafka_config, prefix, [snapshot_record("province", "2025-07-01", 0, 5,
                                                   {"received": 1})])
    server = display()
    server.wait_caught_up(1)
    outcomes: list[str] = []
    opened = threading.Barrier(4)

    def listen(board: str) -> None:
        try:
            with httpx.stream("GET", f"{server.url}/events?board={board}",
                              timeout=budget(30)) as response:
                opened.wait(budget(10))
                for _ in response.iter_lines():
                    pass
            outcomes.append("ended")
        except httpx.HTTPError as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")
    listeners = [threading.Thread(target=listen, args=(b,), daemon=True)
                 for b in ("province", "province", f"commune/{COMMUNE}")]
    for thread in listeners:
        thread.start()
    opened.wait(budget(10))
    started = time.monotonic()
    server.stop()
    took = time.monotonic() - started
    for thread in listeners:
        thread.join(budget(10))
    assert outcomes == ["ended"] * 3, outcomes
    # under the 1 s grace period: what is tested, not scaled
    assert took < 0.9, f"stopping took {took:.2f} s: the streams waited for the grace period"


def test_the_server_listens_on_loopback_unless_told_otherwise() -> None:
    from infra.settings import Settings

    assert Settings().display_host == "127.0.0.1"


# --- against the real pipeline ---------------------------------------------------------------

@pytest.fixture(scope="module")
def day_workload(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return simulate(tmp_path_factory.mktemp("displayday"), date(2025, 7, 1), date(2025, 7, 1),
                    scale=0.05)


def test_the_province_board_shows_what_motcua_counters_prints(
        kafka_config: dict[str, Any], broker: Broker, prefix: str, tmp_path: Path,
        day_workload: Any, display: Callable[..., DisplayServer], page: Page) -> None:
    produce(kafka_config, prefix, day_workload.records)
    worker = WorkerProcess(tmp_path, broker.bootstrap, prefix, day_workload.keys_dir,
                           **broker.group_env).start()
    try:
        server = display()
        day = date(2025, 7, 1)
        expected = day_workload.expected()
        want = expected[("province", day.isoformat(), "received")]
        def reached() -> bool:
            assert worker.alive(), worker.output()
            return bool(server.get("/api/figures?scope=province&from=2025-07-01&to=2025-07-01"
                                   ).json()["received"] == want)
        poll_until(reached, 90, f"the board to reach {want}", interval=0.3,
                   detail=worker.output)
        # what `motcua counters --json` prints for the same day, from the same topic
        out = subprocess.run([*MOTCUA, "counters", "--json", "--from", "2025-07-01", "--to",
                              "2025-07-01"], env=cli_env(MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap,
                                                         MOTCUA_TOPIC_PREFIX=prefix),
                             capture_output=True, text=True, timeout=budget(60), check=True)
        printed = json.loads(out.stdout)
        api = server.get("/api/figures?scope=province&from=2025-07-01&to=2025-07-01").json()
        # the same figures (counters adds how fresh they are: as_of, behind, ...)
        assert api == {k: v for k, v in printed.items() if k in api}
        assert set(api) <= set(printed)
        snaps = read_snapshots(kafka_config, prefix + COUNTERS)
        assert scope_figures(snaps, "province", day, day).as_dict()["received"] == want
        # "as of": the event time of the newest event counted. Every receipt moves the
        # province's counters, so it is at least the newest receipt's time, and no later
        # than the newest event's (read from the events here, not from the worker)
        times = [(json.loads(v)["type"], datetime.fromisoformat(json.loads(v)["occurred_at"]))
                 for _, _, v in day_workload.records]
        as_of = datetime.fromisoformat(server.get("/api/board").json()["meta"]["as_of"])
        newest_receipt = max(at for kind, at in times if kind == "dossier.received")
        assert newest_receipt <= as_of <= max(at for _, at in times), as_of
        # and the browser shows it, Vietnamese-formatted, with nothing from elsewhere
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{server.url}/board/province")
        page.wait_for_selector("[data-k='today.received']")
        page.evaluate("() => document.fonts.ready")
        assert page.evaluate("() => [...document.fonts].some(f => f.status === 'loaded' && "
                             "f.family.includes('Be Vietnam Pro'))"), "shipped font not in use"
        assert requested and all(u.startswith(server.url + "/") for u in requested), requested
        cell = page.locator("[data-k='today.received']")
        assert cell.inner_text() == vi(printed["received"])
        assert page.locator("[data-k='today.online_rate']").inner_text() == \
            vi_rate(printed["online_rate"])
        assert page.locator("#state").get_attribute("data-level") == "ok"
        # the ranking: the communes the server ranks lowest, in its order, on screen
        ranking = server.get("/api/board").json()["ranking"]
        assert ranking["online"]["rated"] >= 10  # a commune with a dossier has a rate
        for column, key in enumerate(("on_time", "online")):
            codes = page.locator(".ranking .col").nth(column).locator("ol.lowest li")
            assert [codes.nth(i).get_attribute("data-code") for i in range(codes.count())] \
                == [r["code"] for r in ranking[key]["lowest"]]
        english = page.context.new_page()
        english.goto(f"{server.url}/board/province?lang=en")
        english.wait_for_selector("[data-k='today.received']")
        assert english.locator("[data-k='today.received']").inner_text() == \
            f"{printed['received']:,}"
        english.close()
    finally:
        worker.stop()


#: receipts a second at other communes while G7 is measured: the province's mean is about
#: one event a second (~6,700 dossiers x 3-8 events over an office day, DESIGN.md), so this
#: is a peak of fifty times the mean, through the same store, relay, worker and display
LOAD_PER_S = 50
COMMITS, COMMITS_PER_S = 100, 5  # the commits timed, at one commune


def first_seen(tab: Page, count: int) -> float | None:
    """When (the page's clock, ms) its received count first showed ``count`` or more."""
    times = tab.evaluate("() => window.__seen")
    at = [when for text, when in times.items() if int(text.replace(".", "")) >= count]
    return min(at) if at else None


def test_a_commit_shows_on_the_commune_and_province_boards_within_a_second(
        kafka_config: dict[str, Any], broker: Broker, prefix: str, tmp_path: Path,
        display: Callable[..., DisplayServer], browser: Browser) -> None:
    """G7 under load: while other communes receive LOAD_PER_S dossiers a second, each of 20
    commits at one commune shows on its board, and everything committed by then on the
    province board, within a second of the commit."""
    keys = tmp_path / "keys"
    init_keystore(keys, node_ids())
    engine = open_store(f"sqlite:///{tmp_path / 'nodes.db'}")
    service = DossierService(engine, Keyring(keys))
    relay = Relay(engine, kafka_config, topic_prefix=prefix)
    stop = threading.Event()
    relay_thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    relay_thread.start()
    worker = WorkerProcess(tmp_path, broker.bootstrap, prefix, keys, **broker.group_env).start()
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    try:
        server = display()

        received_at: list[datetime] = []

        def receive() -> float:
            received_at.append(datetime.now(UTC).replace(microsecond=123_000))
            service.receive(COMMUNE, channel="online", procedure_code="1.000001",
                            field="Hộ tịch", due_date=date(2027, 1, 1),
                            components_digitised=True, at=received_at[-1])
            return time.time()
        receive()  # the first dossier of the day: the boards open on today
        boards = {}
        for name in (f"commune/{COMMUNE}", "province"):
            tab = context.new_page()
            tab.goto(f"{server.url}/board/{name}")
            tab.wait_for_function(
                "() => { const e = document.querySelector(\"[data-k='today.received']\");"
                " return e && e.textContent === '1'; }", timeout=ms(60))
            # When the number changes on screen, in the page's own clock: Playwright's
            # polling runs once a second in a tab that is not in front (requestAnimationFrame
            # and timers are throttled there), which would measure the poll, not the board.
            tab.evaluate(SEEN)
            boards[name] = tab
        # the board's day is today (the node stamps its events with the present)
        assert boards["province"].locator(".when .day").inner_text() == \
            f"Hôm nay · {datetime.now(LOCAL_TZ).date():%d/%m/%Y}"
        load = Load(service, [n for n in node_ids() if n != COMMUNE and n.isdigit()])
        load.start()
        commits: list[tuple[int, int, float]] = []  # (commune count, all, when committed)
        try:
            # steady load: three seconds of it, and the province board keeping up with it
            poll_until(lambda: load.done >= 3 * LOAD_PER_S, 10, "three seconds of load")
            caught = load.done + 1
            poll_until(lambda: first_seen(boards["province"], caught), 10,
                       "the province board to show the load")
            began = time.monotonic()
            for i, n in enumerate(range(2, 2 + COMMITS)):
                time.sleep(max(0.0, began + i / COMMITS_PER_S - time.monotonic()))
                committed = receive()
                # everything committed by now: the province board must reach this count
                commits.append((n, n + load.done, committed))
        finally:
            load.stop()
        assert load.error is None, load.error
        rate = load.done / (load.ended - load.began)
        assert rate > 0.8 * LOAD_PER_S, f"the load ran at {rate:.0f}/s"
        delays: dict[str, list[float]] = {}
        for name, tab in boards.items():
            def shown(k: int, t: Page = tab, board: str = name) -> float:
                # a wait (scaled); how soon it showed is checked below
                at = poll_until(lambda: first_seen(t, k), 10, f"{board} to show {k}")
                assert at is not None
                return at
            delays[name] = sorted(shown(total if name == "province" else n) / 1000 - committed
                                  for n, total, committed in commits)
        # G7: p99 within a second (0.05-0.32 s measured here on both brokers without load):
        # the guarantee under test, not scaled. p99 by nearest rank: the 99th of 100.
        p99 = {name: d[math.ceil(0.99 * len(d)) - 1] for name, d in delays.items()}
        print(f"\nG7 at {rate:.0f} receipts/s: " + ", ".join(
            f"{name} p50 {d[len(d) // 2]:.3f} p99 {p99[name]:.3f} max {d[-1]:.3f} s"
            for name, d in delays.items()))
        for name, d in delays.items():
            assert p99[name] < 1.0, \
                f"commit -> {name} board at {rate:.0f}/s (s): {[round(x, 3) for x in d]}"
        # the newest event on both boards, for "as of": a second after the load's last, as
        # receive() stamps its events at .123 of the current second
        time.sleep(1.0)
        receive()
        for name in boards:
            def as_of_last(b: str = name) -> bool:
                as_of = server.get(f"/api/board?board={b}").json()["meta"]["as_of"]
                return datetime.fromisoformat(as_of) == received_at[-1]
            poll_until(as_of_last, 10, f"{name} to be as of the last commit")
        # "as of" is the newest dossier's event time, to the millisecond, shown in local time
        clock = received_at[-1].astimezone(LOCAL_TZ).strftime("%H:%M:%S")
        for name, tab in boards.items():
            as_of = server.get(f"/api/board?board={name}").json()["meta"]["as_of"]
            assert datetime.fromisoformat(as_of) == received_at[-1], (name, as_of)
            tab.wait_for_function(
                "(c) => document.querySelector('footer.fresh').textContent.includes(c)",
                arg=f"số liệu đến {clock}", timeout=ms(5))
    finally:
        context.close()
        worker.stop()
        stop.set()
        relay_thread.join(30)
        engine.dispose()


class Load(threading.Thread):
    """Receives LOAD_PER_S dossiers a second, stamped now, at ``communes`` in turn."""

    def __init__(self, service: DossierService, communes: list[str]) -> None:
        super().__init__(name="load", daemon=True)
        self.service, self.communes = service, communes
        self.done = 0
        self.error: BaseException | None = None
        self.began = self.ended = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        self.began = time.monotonic()
        try:
            while not self._stop_event.is_set():
                due = self.began + self.done / LOAD_PER_S
                self._stop_event.wait(max(0.0, due - time.monotonic()))
                node = self.communes[self.done % len(self.communes)]
                self.service.receive(node, channel=("online", "in_person", "postal")[
                    self.done % 3], procedure_code="1.000001", field="Hộ tịch",
                    due_date=date(2027, 1, 1), components_digitised=False,
                    at=datetime.now(UTC))
                self.done += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.ended = time.monotonic()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)


# --- freshness and reconnection in the browser ------------------------------------------------

def test_a_stopped_stream_worker_turns_the_board_amber_then_red_and_says_why(
        kafka_config: dict[str, Any], broker: Broker, prefix: str, tmp_path: Path,
        display: Callable[..., DisplayServer], page: Page) -> None:
    """A commune keeps receiving dossiers (4 a second) while its stream worker is killed
    (kill -9): the board turns amber 3 s after the last record and red after 6 s (this
    test's thresholds), names the stream worker, keeps the last good figure labelled with
    its age, and is live and exact again once a worker is back."""
    keys = tmp_path / "keys"
    init_keystore(keys, node_ids())
    engine = open_store(f"sqlite:///{tmp_path / 'nodes.db'}")
    service = DossierService(engine, Keyring(keys))
    relay = Relay(engine, kafka_config, topic_prefix=prefix)
    stop, enough = threading.Event(), threading.Event()
    threads = [threading.Thread(target=relay.run, args=(stop,), daemon=True)]
    committed = [0]

    def commit() -> None:
        while not enough.wait(0.25):
            service.receive(COMMUNE, channel="in_person", procedure_code="1.000001",
                            field="Hộ tịch", due_date=date(2027, 1, 1),
                            components_digitised=False)
            committed[0] += 1
    threads.append(threading.Thread(target=commit, daemon=True))
    for thread in threads:
        thread.start()
    worker = WorkerProcess(tmp_path, broker.bootstrap, prefix, keys, **broker.group_env).start()
    try:
        server = display(amber_s=3.0, red_s=6.0)
        page.goto(f"{server.url}/board/commune/{COMMUNE}")
        cell = page.locator("[data-k='today.received']")
        page.wait_for_function(
            "() => { const e = document.querySelector(\"[data-k='today.received']\");"
            " return e && Number(e.textContent.replace(/\\./g, '')) >= 3; }", timeout=ms(60))
        assert page.locator("#state").get_attribute("data-level") == "ok"
        worker.kill()
        # when the display read its last record, from its own count of the silence
        deadline = Deadline(10, "the display to notice the silence")
        while (health := server.get("/healthz").json())["last_record_age_s"] < 1.0:
            assert not deadline.expired(), deadline.message(str(health))
            time.sleep(0.1)
        last_record = time.monotonic() - health["last_record_age_s"]
        shown = cell.inner_text()
        # waits (scaled); when amber and red came is checked below, not scaled
        page.wait_for_function("() => document.querySelector('#state').dataset.level === "
                               "'amber'", timeout=ms(15))
        amber_at = time.monotonic() - last_record
        assert "Bộ xử lý luồng không gửi số liệu" in page.locator("#state").inner_text()
        page.wait_for_function("() => document.querySelector('#state').dataset.level === "
                               "'red'", timeout=ms(15))
        red_at = time.monotonic() - last_record
        # 0.2 s: the server reports the silence rounded to 0.1 s, and so does the status
        # the page counts from; the page judges once a second, the status comes every second
        assert 3.0 - 0.2 <= amber_at < 3.0 + 2.5, f"amber {amber_at:.1f} s after the last record"
        assert 6.0 - 0.2 <= red_at < 6.0 + 2.5, f"red {red_at:.1f} s after the last record"
        # the node went on (the relay sent on) but the board holds its last good value,
        # framed and labelled with its age, never as live
        assert committed[0] > int(shown.replace(".", ""))
        assert cell.inner_text() == shown
        footer = page.locator("footer.fresh").first
        assert footer.get_attribute("data-level") == "red" and "trước" in footer.inner_text()
        assert "red" in (page.locator("body").get_attribute("class") or "").split()
        assert server.get("/healthz").status_code == 200  # the display itself is fine
        # a worker again: live, and every dossier counted once
        worker.start()
        try:
            page.wait_for_function("() => document.querySelector('#state').dataset.level "
                                   "=== 'ok'", timeout=ms(60))
        except PlaywrightTimeout:
            raise AssertionError(f"not live again: {page.locator('#state').inner_text()}, "
                                 f"{server.get('/healthz').json()}\n{worker.output()}"
                                 ) from None
        enough.set()
        threads[1].join(budget(30))
        page.wait_for_function(
            "(n) => document.querySelector(\"[data-k='today.received']\").textContent === n",
            arg=vi(committed[0]), timeout=ms(30))
    finally:
        enough.set()
        stop.set()
        for thread in threads:
            thread.join(30)
        worker.stop()
        engine.dispose()


def test_the_open_page_rejoins_a_restarted_server_without_a_reload(
        kafka_config: dict[str, Any], prefix: str, display: Callable[..., DisplayServer],
        page: Page) -> None:
    produce(kafka_config, prefix, [snapshot_record("province", "2025-07-01", 0, 5,
                                                   {"received": 20})])
    port = free_port()
    first = display(port, amber_s=3.0, red_s=30.0)
    first.wait_caught_up(1)
    page.goto(f"{first.url}/board/province")
    page.wait_for_selector("[data-k='today.received']")
    page.evaluate("() => { window.__sameDocument = true; }")
    first.stop()
    page.wait_for_function("() => document.querySelector('#state').textContent"
                           ".includes('Không kết nối được máy chủ bảng')", timeout=ms(15))
    assert page.locator("#state").get_attribute("data-level") == "amber"
    assert page.locator("[data-k='today.received']").inner_text() == "20"  # kept, labelled
    produce(kafka_config, prefix, [snapshot_record("province", "2025-07-01", 0, 9,
                                                   {"received": 21})])
    second = display(port, amber_s=3.0, red_s=30.0)
    second.wait_caught_up(2)
    page.wait_for_function(
        "() => document.querySelector(\"[data-k='today.received']\").textContent === '21'"
        " && document.querySelector('#state').dataset.level === 'ok'", timeout=ms(40))
    assert page.evaluate("() => window.__sameDocument === true"), "the page was reloaded"

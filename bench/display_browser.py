"""A commit at a node → the number changed on a wall board in a real browser (G7, issue
12), at 200 dossiers a second.

What runs, each in its own process as deployed: the embedded broker, ``motcua relay --all``,
``motcua streams`` (signatures verified), ``motcua display``, and Debian's chromium (through
Playwright) with two boards open: the province and one commune. This process commits
dossiers through the real dossier service at 200 a second, round-robin over the 106 nodes.

The page notes, in its own clock, when each value of today's received count first showed
(a MutationObserver on the board). Counts only grow, so commit k of the run is on screen
from the first moment the board shows at least (the count before the run) + k; its latency
is that moment minus the wall-clock time right after its commit. Every commit is measured
on the province board; the commune board sees every 106th.

Run: ``.venv/bin/python -m bench.display_browser [SECONDS] [REPEATS]`` (default 60 s, 3).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright

from bench import receive_at_rate
from infra.broker import EmbeddedBroker, free_port
from producers.migrate import open_store
from producers.service import DossierService
from schemas.keys import Keyring, init_keystore
from schemas.nodes import node_ids
from tests.integration.test_broker import MOTCUA, cli_env
from tests.streams_support import WorkerProcess, provision

RATE = 200.0
CHROMIUM = "/usr/bin/chromium"
COMMUNE = next(n for n in node_ids() if not n.startswith("site-"))

#: In the page: the wall-clock time each value of today's received count first showed.
SEEN = """() => {
  window.__seen = {};
  const note = () => {
    const e = document.querySelector("[data-k='today.received']");
    if (!e) return;
    const n = Number(e.textContent.replace(/[.,]/g, ""));
    if (!(n in window.__seen)) window.__seen[n] = Date.now();
  };
  new MutationObserver(note).observe(document.getElementById("app"),
                                     {childList: true, subtree: true, characterData: true});
  note();
}"""


def _shown(page: Page) -> int:
    text = page.locator("[data-k='today.received']").inner_text()
    return int(text.replace(".", "").replace(",", ""))


def _showing(page: Page, count: int, at_least: bool = False) -> Callable[[], tuple[bool, int]]:
    """A ``_wait`` check: the board in ``page`` shows ``count`` (or more)."""
    def check() -> tuple[bool, int]:
        shown = _shown(page)
        return (shown >= count if at_least else shown == count), shown
    return check


def _wait(what: str, check: Callable[[], tuple[bool, object]], timeout: float) -> None:
    """Until ``check`` says (True, _); its second value says where things stood."""
    deadline = time.monotonic() + timeout
    while not (last := check())[0]:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} not reached in {timeout:.0f} s ({last[1]})")
        time.sleep(0.2)


def _latencies(seen: dict[str, int], base: int, commits: list[float]) -> list[float]:
    """Per commit (wall times, in order), ms from commit to the first showing of a count
    that includes it."""
    shown = sorted((int(v), t / 1000) for v, t in seen.items())
    out = []
    for k, committed in enumerate(commits, start=1):
        at = next((t for v, t in shown if v >= base + k), None)
        if at is None:
            raise SystemExit(f"bench: commit {k} of {len(commits)} never showed "
                             f"(last shown {shown[-1] if shown else None})")
        out.append((at - committed) * 1000)
    return out


def run(seconds: float) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedBroker(
            log_path=Path(tmp_name) / "tansu.log") as broker:
        tmp = Path(tmp_name)
        prefix = "disp."
        provision({"bootstrap_servers": [broker.bootstrap]}, prefix)
        keys = tmp / "keys"
        init_keystore(keys, node_ids())
        env = cli_env(MOTCUA_KAFKA_BOOTSTRAP=broker.bootstrap, MOTCUA_TOPIC_PREFIX=prefix)
        worker = WorkerProcess(tmp, broker.bootstrap, prefix, keys).start()
        engine = open_store(f"sqlite:///{tmp / 'nodes.db'}")
        service = DossierService(engine, Keyring(keys))
        port = free_port()
        children = [subprocess.Popen([*MOTCUA, *args], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
                    for args in (["relay", "--all", "--db", f"sqlite:///{tmp / 'nodes.db'}"],
                                 ["display", "--port", str(port)])]
        url = f"http://127.0.0.1:{port}"
        try:
            # every node gets its first dossier before the timing (the relay claims new
            # nodes every 2 s; a deployment's nodes exist long before their next dossier)
            _, warm = receive_at_rate(service, node_ids(), len(node_ids()) / RATE, RATE)
            nodes = [node_ids()[n % len(node_ids())] for n in range(len(warm))]
            base = {"province": len(warm), f"commune/{COMMUNE}": nodes.count(COMMUNE)}

            def board_count(name: str) -> int:
                try:
                    view = httpx.get(f"{url}/api/board?board={name}", timeout=5).json()
                except httpx.HTTPError:
                    return -1
                return int(view["today"]["received"])
            _wait(f"the warm-up on the boards ({base})",
                  lambda: ((got := {n: board_count(n) for n in base}) == base, got), 90)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                pages = {}
                for name in base:
                    page = browser.new_context(viewport={"width": 1920, "height": 1080}
                                               ).new_page()
                    page.goto(f"{url}/board/{name}")
                    page.wait_for_selector("[data-k='today.received']")
                    _wait(f"{name} in the browser", _showing(page, base[name]), 30)
                    page.evaluate(SEEN)
                    pages[name] = page
                _, wall = receive_at_rate(service, node_ids(), seconds, RATE)
                # receive_at_rate goes round the nodes in order, from the first again
                ids = sorted(wall, key=wall.__getitem__)
                at = [node_ids()[n % len(node_ids())] for n in range(len(ids))]
                commits = {"province": [wall[i] for i in ids],
                           f"commune/{COMMUNE}": [wall[i] for i, node in zip(ids, at, strict=True)
                                                  if node == COMMUNE]}
                final = {n: base[n] + len(c) for n, c in commits.items()}
                for name, page in pages.items():
                    _wait(f"all {final[name]} on {name}",
                          _showing(page, final[name], at_least=True), 60)
                out = {name: _latencies(page.evaluate("() => window.__seen"), base[name],
                                        commits[name]) for name, page in pages.items()}
                out["rate"] = [len(ids) / seconds]
                browser.close()
            return out
        finally:
            for child in children:
                child.terminate()
                child.wait(20)
            worker.stop()
            engine.dispose()


def main(seconds: float = 60.0, repeats: int = 3) -> None:
    print(f"{RATE:.0f} dossiers/s committed for {seconds:.0f} s over the 106 nodes; embedded "
          "broker; relay, worker, display and chromium each in its own process; "
          f"{repeats} repeats", flush=True)
    rows = []
    for r in range(repeats):
        res = run(seconds)
        row = {"rate": res["rate"][0]}
        for name in ("province", f"commune/{COMMUNE}"):
            q = statistics.quantiles(res[name], n=100, method="inclusive")
            row |= {f"{name} p50": q[49], f"{name} p99": q[98], f"{name} max": max(res[name]),
                    f"{name} n": len(res[name])}
        rows.append(row)
        print(f"repeat {r + 1}: " + ", ".join(
            f"{k} {v:,.0f}" if not k.endswith("rate") else f"{k} {v:.1f}/s"
            for k, v in row.items()), flush=True)
    print("\n| measure | median | spread (min-max) |\n|---|---:|---:|")
    for measure in rows[0]:
        values = [row[measure] for row in rows]
        fmt = "{:.1f}" if measure == "rate" else "{:,.0f}"
        unit = "commits/s" if measure == "rate" else ("" if measure.endswith(" n") else "ms")
        print(f"| {measure} {unit} | {fmt.format(statistics.median(values))} | "
              f"{fmt.format(min(values))}-{fmt.format(max(values))} |")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0,
         int(sys.argv[2]) if len(sys.argv) > 2 else 3)

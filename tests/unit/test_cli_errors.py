"""Ordinary bad settings and options (issue 14): each is one line on stderr naming the
variable or option and what to do, exit status 2, never a traceback, and waiting on a broker
that is not there obeys MOTCUA_KAFKA_BOOTSTRAP_TIMEOUT_MS.

``motcua`` runs in-process (``main(argv)``) with a controlled environment: faster than a
subprocess, and the same code path (``python -m infra.cli`` only calls ``main``)."""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.broker import free_port
from infra.cli import args as cli_args
from infra.cli.bootstrap import open_replica
from infra.cli.main import build_parser, main
from infra.settings import load_settings
from producers.relay import producer_config

ONE_DAY = ["--from", "2025-07-01", "--to", "2025-07-01", "--scale", "0.01"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No MOTCUA_* from the caller's shell; data under tmp_path; run from tmp_path. main()
    takes SIGTERM/SIGHUP over: given back afterwards."""
    for key in list(os.environ):
        if key.startswith("MOTCUA_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MOTCUA_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.chdir(tmp_path)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def motcua(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit status and stderr of ``motcua ARGV`` (argparse's refusals exit via SystemExit)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def one_line(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    for name in names:
        assert name in err, f"{name!r} not in {err!r}"


# --- MOTCUA_DATA_DIR --------------------------------------------------------------------

def test_a_data_dir_that_is_a_file(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("MOTCUA_DATA_DIR", "afile")  # relative: the message says it absolute
    code, err = motcua(capsys, "keys", "init")
    one_line(code, err, "MOTCUA_DATA_DIR", f"{tmp_path / 'afile'} is a file")
    monkeypatch.setenv("MOTCUA_DATA_DIR", "afile/below")
    code, err = motcua(capsys, "simulate", "--no-relay", *ONE_DAY)
    one_line(code, err, "MOTCUA_DATA_DIR", str(tmp_path / "afile"))


def test_a_data_dir_that_cannot_be_written(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes through any mode bits; procfs refuses even root
        parent = Path("/proc/sys")
    else:
        parent = tmp_path / "locked"
        parent.mkdir(mode=0o555)
    if os.access(parent, os.W_OK):
        pytest.skip(f"{parent} is writable here: no read-only folder to try")
    monkeypatch.setenv("MOTCUA_DATA_DIR", str(parent / "motcua"))
    code, err = motcua(capsys, "keys", "init")
    one_line(code, err, "MOTCUA_DATA_DIR", f"{parent} is not writable")
    monkeypatch.setenv("MOTCUA_DATA_DIR", str(parent))
    code, err = motcua(capsys, "simulate", "--no-relay", *ONE_DAY)
    one_line(code, err, "MOTCUA_DATA_DIR", f"{parent} is not writable")


# --- database URLs ----------------------------------------------------------------------

@pytest.mark.parametrize(("url", "says"), [
    ("nonsense", "not a database URL"),
    ("mysql://u:secret@127.0.0.1/x", "'mysql' is not supported"),
    ("garbage://", "'garbage' is not supported"),
])
def test_a_db_url_motcua_cannot_use(capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch, url: str,
                                    says: str) -> None:
    monkeypatch.setenv("MOTCUA_DB_URL", url)
    code, err = motcua(capsys, "simulate", "--no-relay", *ONE_DAY)
    one_line(code, err, "MOTCUA_DB_URL", says, "postgresql+psycopg://")
    assert "secret" not in err


def test_an_unreachable_postgresql(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MOTCUA_DB_URL", f"postgresql+psycopg://u:secret@127.0.0.1:{port}/x")
    code, err = motcua(capsys, "simulate", "--no-relay", *ONE_DAY)
    one_line(code, err, "MOTCUA_DB_URL", f"127.0.0.1:{port}", "refused")
    assert "secret" not in err


def test_a_sqlite_file_that_cannot_be_made(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("MOTCUA_DB_URL", f"sqlite:///{tmp_path}/afile/nodes.db")
    code, err = motcua(capsys, "simulate", "--no-relay", *ONE_DAY)
    one_line(code, err, "MOTCUA_DB_URL", str(tmp_path / "afile"))
    monkeypatch.delenv("MOTCUA_DB_URL")
    code, err = motcua(capsys, "simulate", "--no-relay", "--db", "sqlite:///afile/x.db",
                       *ONE_DAY)
    one_line(code, err, "--db", str(tmp_path / "afile"))


@pytest.mark.parametrize("argv", [["sync", "status"], ["sync", "--node", "site-phohien"]])
def test_a_garbage_sync_db_url(capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> None:
    monkeypatch.setenv("MOTCUA_SYNC_DB_URL", "garbage://")
    code, err = motcua(capsys, *argv)
    one_line(code, err, "MOTCUA_SYNC_DB_URL", "'garbage' is not supported")


def test_a_bad_db_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = motcua(capsys, "simulate", "--db", "mysql://u:secret@h/x", *ONE_DAY)
    one_line(code, err, "--db", "'mysql' is not supported")
    assert "secret" not in err


# --- Kafka ------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["garbage", "127.0.0.1", "k1:9092,k2", "h:70000", "h:"])
def test_a_bootstrap_that_is_not_host_port(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch,
                                           value: str) -> None:
    monkeypatch.setenv("MOTCUA_KAFKA_BOOTSTRAP", value)
    code, err = motcua(capsys, "counters")
    one_line(code, err, "MOTCUA_KAFKA_BOOTSTRAP", "host:port")


def test_good_bootstraps_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    for value in ("127.0.0.1:9092", "k1.example:9093,k2:9093", "[::1]:9092"):
        assert load_settings(kafka_bootstrap=value).kafka_bootstrap == value


def test_every_kafka_client_gets_the_bootstrap_timeout() -> None:
    config = load_settings(kafka_bootstrap="k:9092",
                           kafka_bootstrap_timeout_ms=1500).kafka_config()
    assert config["bootstrap_timeout_ms"] == 1500
    # the relay keeps its own shorter wait (it retries on another server at once)
    assert producer_config({**config, "bootstrap_timeout_ms": 10_000}, 20.0)[
        "bootstrap_timeout_ms"] == 20_000 // 6
    assert producer_config(config, 20.0)["bootstrap_timeout_ms"] == 1500


@pytest.mark.parametrize("argv", [["counters"], ["dead-letters"], ["sync", "status"]])
def test_an_unreachable_broker_is_said_within_the_bootstrap_timeout(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        argv: list[str]) -> None:
    port = free_port()  # nobody listens there
    monkeypatch.setenv("MOTCUA_KAFKA_BOOTSTRAP", f"127.0.0.1:{port}")
    monkeypatch.setenv("MOTCUA_KAFKA_BOOTSTRAP_TIMEOUT_MS", "1500")
    if argv[0] == "sync":  # status asks the broker only about replicas that exist
        monkeypatch.setenv("MOTCUA_SYNC_NODES", "site-phohien")
        open_replica(load_settings(), "site-phohien").engine.dispose()
    started = time.monotonic()
    code, err = motcua(capsys, *argv)
    took = time.monotonic() - started
    one_line(code, err, f"cannot reach Kafka at 127.0.0.1:{port}", "MOTCUA_KAFKA_BOOTSTRAP",
             "1.5 s")
    assert took < 12, f"{took:.1f} s: the 30 s client default is back"


# --- where things are -------------------------------------------------------------------

def test_sync_status_says_where_it_looked(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MOTCUA_DATA_DIR")  # the default, var, from here
    code, err = motcua(capsys, "sync", "status")
    one_line(code, err, f"in {elsewhere / 'var' / 'replicas'};", "MOTCUA_DATA_DIR")
    assert load_settings().data_dir == elsewhere / "var"  # absolute


def test_sync_status_names_a_missing_replica_absolute(tmp_path: Path) -> None:
    """Where some replicas exist, the row of a missing one says where it looked."""
    from infra.cli.sync import node_status

    row = node_status(load_settings(), "11977")
    assert str(tmp_path / "var" / "replicas" / "11977.db") in row["replica"]


# --- options ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["audit", "verify", "--timeout", "-1"],
    ["audit", "replay", "--timeout", "0"],
    ["counters", "--timeout", "0"],
    ["dead-letters", "--timeout", "nan"],
    ["sync", "status", "--timeout", "-5"],
    ["simulate", "--scale", "0"],
    ["simulate", "--drain-timeout", "-1"],
    ["simulate", "--seed", "x"],
    ["relay", "--all", "--batch-size", "0"],
    ["relay", "--all", "--lease-seconds", "0"],
    ["up", "--port", "0"],
    ["up", "--scale", "-1"],
    ["broker", "--port", "70000"],
    ["display", "--port", "-1"],
    ["display", "--reload-hours", "-1"],
    ["kafka", "up", "--brokers", "0"],
    ["kafka", "up", "--port", "65500"],
    ["archive", "--checkpoint-every", "0"],
    ["counters", "--from", "July"],
])
def test_a_bad_number_is_refused_by_its_option(capsys: pytest.CaptureFixture[str],
                                               argv: list[str]) -> None:
    option = next(a for a in argv if a.startswith("--") and a != "--all")
    code, err = motcua(capsys, *argv)
    one_line(code, err, f"argument {option}", "--help")


def _options() -> Iterator[tuple[str, argparse.Action]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                yield name, action


def test_every_option_has_help_and_numbers_are_checked() -> None:
    durations = {cli_args.seconds}
    for name, action in _options():
        where = f"motcua {name} {'/'.join(action.option_strings) or action.dest}"
        assert action.help, f"{where} has no help text"
        if action.type in durations:
            assert "second" in action.help or action.metavar == "SECONDS", (
                f"{where}: say the unit")
        # a bare int/float takes -1 and 0: every number goes through a checking type
        if action.type in (int, float):
            assert (name, action.dest) == ("simulate", "seed"), f"{where}: unchecked number"


def test_sync_usage_reads_naturally() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = sub.choices["sync"].format_help()
    assert "{run,status}" not in text
    assert "motcua sync status" in text and "motcua sync --node ID" in text

"""infra/deploy against the code it deploys: every `motcua ...` line of the systemd units and
compose.yaml parses with the real CLI, every metric the alerts, the scrape config and the
dashboard name is one infra/metrics.py exports, every alert's runbook anchor is a heading of
docs/operations.md, and every MOTCUA_* variable is a Settings field. A renamed option,
metric or setting fails here instead of at 3 a.m. in a province's server room."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.cli.main import build_parser
from infra.metrics import METRIC_NAMES, Metrics
from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "infra" / "deploy"
SYSTEMD = DEPLOY / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
# the instance each template unit is checked with (a template may take several kinds)
INSTANCES = {
    "motcua-streams@": ["1", "9"],
    "motcua-sync@": ["site-phohien", "site-thaibinh", "11977"],
    "motcua-archive@": ["site-phohien", "site-thaibinh"],
    "motcua-relay@": ["11977", "site-phohien"],
}


def parse_unit(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value (systemd allows a key more than once)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def expand(line: str, instance: str, env: dict[str, str]) -> str:
    line = line.replace("%i", instance)
    return re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line)


def unit_commands() -> list[tuple[str, list[str]]]:
    """(unit@instance, argv) of every ExecStart, with %i and ${VAR} filled in as systemd
    would: Environment= first, then the instance's file under systemd/instances."""
    cases = []
    for path in UNITS:
        unit = parse_unit(path)
        base = path.name.removesuffix(".service")
        for instance in INSTANCES.get(base, [""]) if base.endswith("@") else [""]:
            env = dict(e.split("=", 1) for e in unit.get("Service.Environment", []))
            for spec in unit.get("Service.EnvironmentFile", []):
                file = SYSTEMD / "instances" / Path(spec.lstrip("-")).name.replace("%i", instance)
                if spec.startswith("-/etc/motcua/instances/") and file.exists():
                    env.update(env_file(file))
            for line in unit["Service.ExecStart"]:
                cases.append((base + instance, shlex.split(expand(line, instance, env))))
    return cases


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return data


def compose_commands() -> list[tuple[str, list[str]]]:
    return [(name, [str(a) for a in svc["command"]])
            for name, svc in compose()["services"].items()
            if svc.get("command") and svc["command"][0] == "motcua"]


def metrics_port(argv: list[str]) -> int | None:
    return int(argv[argv.index("--metrics-port") + 1]) if "--metrics-port" in argv else None


def test_the_files_exist() -> None:
    names = {p.name for p in UNITS}
    assert {"motcua-relay.service", "motcua-relay@.service", "motcua-streams@.service",
            "motcua-sync@.service", "motcua-archive@.service",
            "motcua-display.service"} <= names
    assert len(compose_commands()) >= 10  # keys, topics, relay, 2 streams, 2 sync, ...


@pytest.mark.parametrize(("where", "argv"), unit_commands() + compose_commands(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_every_motcua_command_line_parses(where: str, argv: list[str]) -> None:
    assert Path(argv[0]).name == "motcua", f"{where}: {argv[0]} is not the motcua command"
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: `{shlex.join(argv)}` is refused by motcua's parser")


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_every_unit_is_hardened_and_stops_in_time(path: Path) -> None:
    unit = parse_unit(path)
    expected = {"User": ["motcua"], "NoNewPrivileges": ["yes"], "ProtectSystem": ["strict"],
                "ReadWritePaths": ["/var/lib/motcua"], "Restart": ["on-failure"],
                "TimeoutStopSec": ["10"]}
    for key, values in expected.items():
        assert unit.get(f"Service.{key}") == values, f"{path.name}: {key}"
    assert "/etc/motcua/motcua.env" in unit["Service.EnvironmentFile"]
    assert unit.get("Service.RestartSec"), f"{path.name}: RestartSec"


def test_metrics_ports_are_one_per_process() -> None:
    """systemd: no two units that may share a host claim one port (a relay@ and the relay
    are alternatives; communes' sync@ run one per host). compose: Prometheus's targets and
    each healthcheck ask the port the service's command serves on."""
    ports: dict[int, str] = {}
    for where, argv in unit_commands():
        port = metrics_port(argv)
        assert port is not None, f"{where} serves no metrics"
        if where.startswith("motcua-relay@") or where == "motcua-sync@11977":
            continue
        assert ports.setdefault(port, where) == where, f"{where} and {ports[port]}: {port}"
    targets = yaml.safe_load((DEPLOY / "prometheus" / "targets-compose.yml").read_text())
    scraped = {t for group in targets for t in group["targets"]}
    services = compose()["services"]
    served = set()
    for name, argv in compose_commands():
        port = metrics_port(argv)
        if port is None:
            continue  # one-shots
        served.add(f"{name}:{port}")
        assert f":{port}/healthz" in " ".join(services[name]["healthcheck"]["test"]), name
    assert scraped == served


def histograms() -> set[str]:
    return {family.name for family in Metrics("probe").registry.collect()
            if family.type == "histogram"}


def metric_names(text: str) -> set[str]:
    return set(re.findall(r"\bmotcua_[a-z0-9_]+", text))


def exprs(obj: Any) -> list[str]:
    """Every "expr" string anywhere in a parsed YAML or JSON document."""
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == "expr" and isinstance(v, str)] + [
            e for v in obj.values() for e in exprs(v)]
    if isinstance(obj, list):
        return [e for v in obj for e in exprs(v)]
    return []


@pytest.mark.parametrize("name", ["alerts.yml", "prometheus.yml", "grafana-dashboard.json"])
def test_every_metric_used_is_exported(name: str) -> None:
    text = (DEPLOY / name).read_text()
    doc = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
    known = set(METRIC_NAMES) | {h + s for h in histograms()
                                 for s in ("_bucket", "_sum", "_count")}
    used = metric_names(text)  # comments and titles too: a stale name misleads there
    if name != "prometheus.yml":  # it scrapes whatever is exported, by name nothing
        assert metric_names("\n".join(exprs(doc))), f"{name} queries no motcua metric"
    assert used <= known, f"{name}: not exported by infra/metrics.py: {sorted(used - known)}"


def slug(heading: str) -> str:
    """The anchor a Markdown renderer gives a heading (GitHub's rule)."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_has_a_summary_and_a_runbook_section() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    anchors = {slug(m) for m in re.findall(r"^#+ (.+)$", doc, flags=re.M)}
    rules = [r for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"]
             for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {
        "MotcuaLagHigh", "MotcuaDeadLetters", "MotcuaSnapshotStale", "MotcuaProcessDown",
        "MotcuaNotReady", "MotcuaCommuneSilent"}
    for rule in rules:
        notes = rule["annotations"]
        assert notes["summary"].strip(), rule["alert"]
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == "docs/operations.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no heading #{anchor} in operations.md"


def test_the_dashboard_takes_its_datasource_as_a_variable() -> None:
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


def test_every_motcua_variable_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    files = [SYSTEMD / "motcua.env", DEPLOY / "compose.yaml", DEPLOY / "Dockerfile", *UNITS]
    seen = set()
    for path in files:
        for var in set(re.findall(r"\bMOTCUA_[A-Z0-9_]+", path.read_text())):
            seen.add(var)
            assert var.removeprefix("MOTCUA_").lower() in fields, f"{path.name}: {var}"
    assert {"MOTCUA_KAFKA_BOOTSTRAP", "MOTCUA_DB_URL", "MOTCUA_STREAMS_DB_URL",
            "MOTCUA_SYNC_DB_URL", "MOTCUA_DATA_DIR", "MOTCUA_KEYS_DIR",
            "MOTCUA_KAFKA_SASL_PASSWORD", "MOTCUA_KAFKA_SSL_CAFILE"} <= seen


def test_the_alert_rules_fire_when_they_should_and_only_then() -> None:
    """`promtool` (Debian's prometheus package, installed by .ci/services.sh) checks the
    rules' syntax and runs alerts.test.yml: each alert on synthetic series, e.g. a commune
    silent in office hours (alert) and after closing or on a Saturday (none)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; "
                    ".ci/services.sh does it)")
    checked = subprocess.run([promtool, "check", "rules", "alerts.yml"], cwd=DEPLOY,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", "alerts.test.yml"], cwd=DEPLOY,
                            capture_output=True, text=True, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_takes_the_scrape_config_with_each_targets_file(tmp_path: Path) -> None:
    """prometheus.yml names its rule and targets files where a host installs them
    (/etc/prometheus); here they are copied beside it and the paths pointed there."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; "
                    ".ci/services.sh does it)")
    for targets in sorted((DEPLOY / "prometheus").glob("targets-*.yml")):
        for name in ("alerts.yml", "prometheus.yml"):
            (tmp_path / name).write_text((DEPLOY / name).read_text().replace(
                "/etc/prometheus/", f"{tmp_path}/").replace(
                f"{tmp_path}/motcua-targets.yml", str(targets)))
        checked = subprocess.run([promtool, "check", "config", "prometheus.yml"],
                                 cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, (targets.name, checked.stdout + checked.stderr)

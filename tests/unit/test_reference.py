"""Reference data and settings."""

from __future__ import annotations

import uuid

import pytest

from infra.settings import SettingsError, load_settings
from schemas.ids import new_event_id
from schemas.nodes import SITES, UnknownNode, all_nodes, get_node


def test_106_nodes_93_xa_11_phuong_2_sites() -> None:
    nodes = all_nodes()
    kinds = [n.kind for n in nodes]
    assert (len(nodes), kinds.count("xa"), kinds.count("phuong"), kinds.count("site")) == (
        106, 93, 11, 2)
    assert len({n.id for n in nodes}) == 106
    assert get_node("11977").name == "Xã Tân Hưng"
    assert [get_node(s).gso_code for s in SITES] == ["11953", "13225"]
    assert get_node("11953").name == "Phường Phố Hiến"


def test_unknown_node_names_what_is_expected() -> None:
    with pytest.raises(UnknownNode, match="unknown node '99999': expected a commune's 5-digit"):
        get_node("99999")


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTCUA_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    monkeypatch.setenv("MOTCUA_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MOTCUA_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MOTCUA_KAFKA_SASL_USERNAME", "motcua")
    monkeypatch.setenv("MOTCUA_KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("MOTCUA_KAFKA_SSL_CAFILE", "/etc/ca.pem")
    settings = load_settings()
    config = settings.kafka_config()
    assert config["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert config["sasl_plain_password"] == "s3cret" and config["ssl_cafile"] == "/etc/ca.pem"
    assert "s3cret" not in repr(settings)


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOTCUA_BROKER_PORT", "ninety")
    with pytest.raises(SettingsError, match=r"MOTCUA_BROKER_PORT: .*'ninety'"):
        load_settings()
    monkeypatch.delenv("MOTCUA_BROKER_PORT")
    monkeypatch.setenv("MOTCUA_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(SettingsError, match="needs MOTCUA_KAFKA_SASL_MECHANISM"):
        load_settings().kafka_config("k:9092")


def test_no_bootstrap_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOTCUA_KAFKA_BOOTSTRAP", raising=False)
    with pytest.raises(SettingsError, match="no Kafka bootstrap"):
        load_settings().kafka_config()


def test_event_ids_are_uuid7_and_time_ordered() -> None:
    ids = [new_event_id(now_ms=1_751_331_600_000 + i) for i in range(100)]
    assert all(uuid.UUID(i).version == 7 for i in ids)
    assert ids == sorted(ids)
    assert len(set(new_event_id() for _ in range(1000))) == 1000

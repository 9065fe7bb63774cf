"""The checked-in JSON Schemas are exactly what the models say (run `motcua schemas export`
after changing a model)."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.events import EVENT_TYPES
from schemas.jsonschema import JSON_DIR, expected_files, export


def test_checked_in_schemas_match_the_models() -> None:
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in JSON_DIR.glob("*.json")}
    wanted = expected_files()
    assert sorted(on_disk) == sorted(wanted), "run `motcua schemas export`"
    stale = [name for name in wanted if on_disk[name] != wanted[name]]
    assert not stale, f"out of date: {stale}; run `motcua schemas export`"


def test_one_schema_per_event_type_with_the_envelope_fields() -> None:
    assert len(expected_files()) == len(EVENT_TYPES) == 10
    for name, text in expected_files().items():
        schema = json.loads(text)
        assert schema["title"] == name.removesuffix(".json")
        assert set(schema["required"]) == {
            "event_id", "type", "schema_version", "occurred_at", "origin", "origin_seq",
            "dossier_id", "prev_hash", "hash", "sig", "data"}
        assert schema["additionalProperties"] is False


def test_export_detects_and_repairs_drift(tmp_path: Path) -> None:
    assert len(export(tmp_path)) == 10
    (tmp_path / "dossier.received.json").write_text("{}")
    (tmp_path / "dossier.obsolete.json").write_text("{}")
    assert export(tmp_path) == ["dossier.received.json", "dossier.obsolete.json"]
    assert export(tmp_path) == []

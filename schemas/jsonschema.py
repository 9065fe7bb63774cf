"""Export of one JSON Schema per event type to ``schemas/json/`` (checked in)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.events import EVENT_TYPES
from schemas.upcasters import CURRENT_VERSION

JSON_DIR = Path(__file__).parent / "json"
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_for(event_type: str) -> dict[str, Any]:
    schema = EVENT_TYPES[event_type].model_json_schema(mode="validation")
    schema["$schema"] = DIALECT
    schema["$id"] = f"motcua:{event_type}:v{CURRENT_VERSION[event_type]}"
    schema["title"] = event_type
    return schema


def render(event_type: str) -> str:
    return json.dumps(schema_for(event_type), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def expected_files() -> dict[str, str]:
    """File name -> content for every event type."""
    return {f"{t}.json": render(t) for t in sorted(EVENT_TYPES)}


def export(directory: Path = JSON_DIR) -> list[str]:
    """Rewrite the directory; returns the names of files that changed (or were removed)."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = expected_files()
    changed = []
    for name, text in wanted.items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    for stale in sorted(directory.glob("*.json")):
        if stale.name not in wanted:
            stale.unlink()
            changed.append(stale.name)
    return changed

"""``motcua keys rotate``: a node's new key pair, valid from its next seq (docs/keys.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from infra.db import make_engine, sqlite_file
from producers.store import lock_head
from schemas.errors import MotcuaError
from schemas.keys import rotate_key
from schemas.nodes import get_node


def rotate(node: str, directory: Path, url: str, say: Callable[[str], None]) -> int:
    """Rotate ``node``'s key while holding its head row in the node store at ``url``: no
    event is signed between reading the next seq and replacing the key files, so every
    event before it carries the old key and every one after it the new."""
    get_node(node)  # an unknown node: one line, before touching anything
    if (path := sqlite_file(url)) is not None and not path.is_file():
        raise MotcuaError(f"no node store at {path}: give --db "
                          f"URL (the store that writes {node}'s events) or set MOTCUA_DB_URL")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            head, _ = lock_head(conn, node)
            aside = rotate_key(directory, node, head + 1)
    except SQLAlchemyError as exc:
        shown = engine.url.render_as_string(hide_password=True)
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise MotcuaError(f"cannot read the node store at {shown} ({reason}); give --db URL "
                          "of a migrated node store") from None
    finally:
        engine.dispose()
    say(f"{node}: new key valid from seq {head + 1}"
        + (f"; the old key is kept aside in {aside} and signs no more" if aside else
           " (the replaced key had signed nothing)"))
    return 0

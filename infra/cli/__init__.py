"""The roof: the ``motcua`` command (``main``), ``up``, one module per command family, and
``bootstrap``, the one place that builds objects from ``Settings``. Nothing below imports it
(tests/unit/test_layers.py)."""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """The console script's entry point (imports the commands only when one runs)."""
    from infra.cli.main import main as run

    return run(argv)

"""The house rule (DESIGN.md "Architecture", issue 11): imports point down only.

    schemas  <-  infra platform  <-  producers | streams | consumers  <-  infra.cli

producers, streams and consumers never import each other; only infra.cli reads Settings.
Every import in the source counts, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("producers", "streams", "consumers")


def layer(module: str) -> str | None:
    """The layer of one of our modules, or None for anything else (stdlib, libraries)."""
    top = module.split(".")[0]
    if top == "infra":
        return "cli" if module == "infra.cli" or module.startswith("infra.cli.") else "platform"
    if top in ("schemas", *SERVICES):
        return top
    return None


ALLOWED = {
    "schemas": {"schemas"},
    "platform": {"schemas", "platform"},
    **{s: {"schemas", "platform", s} for s in SERVICES},
    "cli": {"schemas", "platform", *SERVICES, "cli"},
}


def imports(path: Path) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return out


def sources() -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for top in ("schemas", "infra", *SERVICES):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            found.append((".".join(rel.parts).removesuffix(".__init__"), path))
    return found


def test_imports_point_down_only() -> None:
    wrong = []
    for module, path in sources():
        here = layer(module)
        assert here is not None
        for line, name in imports(path):
            there = layer(name)
            if there is not None and there not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {name} "
                             f"({there})")
    assert not wrong, "\n".join(wrong)


def test_only_the_cli_reads_settings() -> None:
    wrong = [f"{path.relative_to(ROOT)}:{line}: {name}"
             for module, path in sources() if layer(module) in SERVICES
             for line, name in imports(path) if name.startswith("infra.settings")]
    assert not wrong, "\n".join(wrong)


def test_no_import_circle() -> None:
    ours = dict(sources())
    graph: dict[str, set[str]] = {}
    for module, path in ours.items():
        targets = set()
        for _, name in imports(path):
            while name and name not in ours:  # `from a.b import c`: c may be a name in a.b
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        if module in stack:
            raise AssertionError("import circle: " + " -> ".join(
                [*stack[stack.index(module):], module]))
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*stack, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_rule_sees_a_wrong_import() -> None:
    # the checker itself: an upward import in a service is found
    assert layer("infra.cli.up") == "cli" and "cli" not in ALLOWED["streams"]
    assert layer("producers.relay") not in ALLOWED["consumers"]
    assert layer("infra.db") in ALLOWED["consumers"]

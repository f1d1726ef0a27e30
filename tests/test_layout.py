"""The package's rooms keep their shape: imports point one way, no cycles, no giant modules.

The rule (docs/CONTRACTS.md, "Rooms"): ``cli`` over ``trainer`` and ``compose``, over
``registry`` and ``models``, over ``catalog``, over ``schemas``; ``errors`` and
``config`` sit under everything. A room may use any room below it, never one above
or beside it. Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "conceptlib"

#: Room -> rooms it may import (besides itself). ``conceptlib`` is the package root
#: (``__version__``, ``open_library``).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "config": {"errors"},
    "schemas": {"errors", "config"},
    "catalog": {"schemas", "errors", "config"},
    "registry": {"catalog", "schemas", "errors", "config"},
    "models": {"schemas", "errors", "config"},
    "trainer": {"models", "registry", "catalog", "schemas", "errors", "config", "conceptlib"},
    "compose": {"models", "registry", "catalog", "schemas", "errors", "config", "conceptlib"},
    "cli": {
        "web",
        "trainer",
        "compose",
        "models",
        "registry",
        "catalog",
        "schemas",
        "errors",
        "config",
        "conceptlib",
    },
    # The local web page (``conceptlib serve``): beside cli, over the library.
    "web": {"compose", "models", "registry", "catalog", "schemas", "errors", "config"},
    "conceptlib": {"registry", "cli"},
    "__main__": {"cli"},
}
MAX_MODULE_LINES = 1000
#: Rooms that must never import these, even lazily (start-up time and purpose).
FORBIDDEN_THIRD_PARTY = {
    "catalog": {"torch", "diffusers", "transformers", "huggingface_hub"},
    "schemas": {"torch", "diffusers", "transformers", "huggingface_hub"},
    "web": {"torch", "diffusers", "transformers", "huggingface_hub"},
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "conceptlib"


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    top_level = {id(n) for n in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` blocks never run
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            top_level.difference_update(id(n) for n in ast.walk(node))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            out += [(n if n in MODULES else target, id(node) in top_level) for n in names]
    return out


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {_module_name(p) for p in FILES}


def _internal(name: str) -> str | None:
    """The conceptlib module an import names (a package's ``__init__`` for a package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@pytest.mark.parametrize("path", FILES, ids=lambda p: _module_name(p))
def test_imports_point_down(path):
    module = _module_name(path)
    room = _room(module)
    wrong = []
    for name, _ in _imports(path):
        if name.split(".")[0] in FORBIDDEN_THIRD_PARTY.get(room, set()):
            wrong.append(f"{name} (never in {room})")
        if not name.startswith("conceptlib"):
            continue
        target = _room(name)
        if target != room and target not in ALLOWED[room]:
            wrong.append(f"{name} ({room} -> {target})")
    assert not wrong, f"{module} imports against the rooms' direction: {wrong}"


def test_compose_never_imports_trainer():
    hits = [
        f"{_module_name(p)} -> {name}"
        for p in FILES
        if _room(_module_name(p)) == "compose"
        for name, _ in _imports(p)
        if name.startswith("conceptlib.trainer")
    ]
    assert hits == []


def test_no_import_cycles_between_modules():
    """Module-level imports form no cycle (a package's ``__init__`` re-exporting its
    own modules is the package, not a cycle)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for p in FILES:
        module = _module_name(p)
        for name, top in _imports(p):
            target = _internal(name) if name.startswith("conceptlib") else None
            if not top or target is None or target == module:
                continue
            if p.name == "__init__.py" and target.startswith(module + "."):
                continue
            graph[module].add(target)
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_over_a_thousand_lines():
    big = {
        _module_name(p): n
        for p in FILES
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert big == {}


def test_every_room_is_a_package_with_a_docstring():
    for room in ALLOWED:
        if room in ("errors", "config", "conceptlib", "__main__"):
            continue
        init = PACKAGE / room / "__init__.py"
        assert init.is_file(), f"{room}/ is not a package"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), room

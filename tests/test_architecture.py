"""The package's architecture, read from its source: floors, no cycles, no private names across modules.

Three floors and a side wing, imports only downward (vlmlib/__init__.py says what each holds):

    book       vlmlib.book.*      may import the paper, the organisms and the library
    paper      vlmlib.paper.*     may import the library
    organisms  vlmlib.organisms.* may import the library
    library    every other module of vlmlib

Every import counts, at module level or inside a function (an import inside a function is still a
dependency; hiding one there is how cycles used to creep in).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "vlmlib"
FLOORS = {"library": 0, "organisms": 1, "paper": 1, "book": 2}
# Which floors a floor may import from (the organisms and the paper sit side by side on the library).
ALLOWED = {
    "library": {"library"},
    "organisms": {"library", "organisms"},
    "paper": {"library", "paper"},
    "book": {"library", "paper", "organisms", "book"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def floor(module: str) -> str:
    parts = module.split(".")
    if module == "vlmlib.__main__":  # `python -m vlmlib` is the book's command line
        return "book"
    return parts[1] if len(parts) > 1 and parts[1] in ("book", "paper", "organisms") else "library"


def resolved(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` reads from (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(module: str, path: Path) -> set[str]:
    """The vlmlib modules `module` imports anywhere in its source (a package's submodule when a name is
    one)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vlmlib")}
        elif isinstance(node, ast.ImportFrom):
            target = resolved(module, path, node)
            if not target.startswith("vlmlib"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in MODULES else target)
    return {m for m in out if m in MODULES and m != module}


GRAPH = {m: imported_modules(m, p) for m, p in MODULES.items()}


def test_every_module_is_on_a_floor_and_imports_only_downward():
    upward = [
        f"{m} ({floor(m)}) imports {t} ({floor(t)})"
        for m, targets in GRAPH.items()
        for t in sorted(targets)
        if floor(t) not in ALLOWED[floor(m)]
    ]
    assert not upward, "imports that go up a floor or across the wing:\n" + "\n".join(upward)


def test_no_import_cycle():
    """Depth-first search over the import graph; a back edge is a cycle, reported with its modules."""
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(GRAPH[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _private_uses(path: Path) -> list[str]:
    """`from vlmlib.x import _name` and `alias._name` where alias is an imported vlmlib module."""
    tree = ast.parse(path.read_text(), str(path))
    found, aliases = [], set()
    module = module_name(path) if PACKAGE in path.parents else ""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = resolved(module, path, node)
            if not source.startswith("vlmlib"):
                continue
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {source}.{a.name}")
                if f"{source}.{a.name}" in MODULES:
                    aliases.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name.startswith("vlmlib") and a.asname}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


def test_no_private_name_is_used_across_modules():
    """A name with a leading underscore belongs to its module: the package's other modules, the tests, the
    notebooks, the benchmarks and the scripts use public names only."""
    paths = [
        *MODULES.values(),
        *(ROOT / "tests").glob("*.py"),
        *(ROOT / "notebooks").glob("*.py"),
        *(ROOT / "benchmarks").glob("*.py"),
        *(ROOT / "scripts").glob("*.py"),
    ]
    found = [use for path in paths for use in _private_uses(path)]
    assert not found, "\n".join(found)


def test_the_public_api_resolves_and_is_the_librarys():
    import vlmlib

    for name in vlmlib.__all__:
        assert getattr(vlmlib, name) is not None, name
    modules = {
        getattr(vlmlib, name).__module__
        for name in vlmlib.__all__
        if hasattr(getattr(vlmlib, name), "__module__")
    }
    assert all(floor(m) == "library" for m in modules if m.startswith("vlmlib")), modules


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"vlmlib.models": {"vlmlib.book.runner"}}, "go up a floor"),
        ({"vlmlib.paper.claims": {"vlmlib.organisms"}}, "go up a floor"),
    ],
)
def test_the_floor_check_fails_on_an_upward_import(bad, message, monkeypatch):
    """The check itself can fail: a made-up upward import is reported."""
    for module, targets in bad.items():
        monkeypatch.setitem(GRAPH, module, GRAPH[module] | targets)
    with pytest.raises(AssertionError, match=message):
        test_every_module_is_on_a_floor_and_imports_only_downward()


def test_the_cycle_check_fails_on_a_cycle(monkeypatch):
    monkeypatch.setitem(GRAPH, "vlmlib.trace", GRAPH["vlmlib.trace"] | {"vlmlib.observation"})
    with pytest.raises(AssertionError, match="vlmlib.observation -> vlmlib.trace -> vlmlib.observation"):
        test_no_import_cycle()

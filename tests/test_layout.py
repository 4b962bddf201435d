"""The package layout holds: no import cycles, imports run one way (cli -> features ->
dissection -> common), subpackage ``__init__`` files re-export nothing, and no module is long.

Imports are read from the source (every ``import`` / ``from ... import`` anywhere in a module,
also inside functions and ``if TYPE_CHECKING:`` blocks), relative imports resolved;
``import a.b.c`` imports ``a.b.c`` (not its parents).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gandissect"
MAX_LINES = 500

#: What each part of the package may import (besides itself): the arrows of the map in
#: docs/architecture.md. ``gandissect`` is the flat public API (``__init__.py``),
#: ``gandissect.__main__`` the ``python -m gandissect`` entry point.
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "probes": {"common"},
    "dissection": {"common"},
    "intervention": {"dissection", "common"},
    "artifacts": {"intervention", "dissection", "common"},
    "inversion": {"intervention", "common"},
    "paint": {"inversion", "intervention", "dissection", "common"},
    "sequence": {"intervention", "dissection", "probes", "common"},
    "cli": {"artifacts", "paint", "inversion", "sequence", "intervention", "dissection", "probes",
            "common"},
    "__init__": {"artifacts", "paint", "inversion", "intervention", "dissection", "probes",
                 "common"},
    "__main__": {"cli"},
}


def module_name(path: Path) -> str:
    parts = ("gandissect",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The gandissect modules that ``name`` (at ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:              # a.b.attr -> module a.b
            target = target.rpartition(".")[0]
        if target:
            out.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gandissect":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                assert node.level - 1 < len(parts), f"{name}: relative import beyond the package"
                base = ".".join(parts[:len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if base.split(".")[0] != "gandissect":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                add(sub if sub in known else base)          # a submodule, or a name of base
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) - {name} for name, path in mods.items()}


def part(module: str) -> str:
    """``gandissect.dissection.engine`` -> ``dissection``; ``gandissect`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``) or ``None``."""
    state: dict[str, int] = {}                              # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_walker_sees_imports() -> None:
    g = graph()
    assert "gandissect.dissection.config" in g["gandissect.dissection.layer_stats"]
    assert "gandissect.common.hooks" in g["gandissect.dissection.engine"]
    assert "gandissect.common.specs" in g["gandissect.paint.painter"]
    # function-level import, absolute
    assert "gandissect.dissection.report" in g["gandissect.cli.dissect"]
    # `from . import name` of a package's attribute
    assert "gandissect.cli" in g["gandissect.cli.app"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_imports_run_one_way() -> None:
    bad = []
    for module, targets in graph().items():
        for target in sorted(targets):
            if target == "gandissect":
                bad.append(f"{module} imports the top-level package (use the module path)")
            elif part(target) != part(module) and part(target) not in ALLOWED[part(module)]:
                bad.append(f"{module} imports {target}")
    assert not bad, "\n".join(bad)


def test_every_module_belongs_to_a_known_part() -> None:
    assert {part(m) for m in modules()} == set(ALLOWED)


def test_subpackage_inits_hold_only_a_docstring() -> None:
    """Importing one module of a subpackage never drags in the rest (``cli`` holds the parser)."""
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        if init.parent.name == "cli":
            continue
        body = ast.parse(init.read_text()).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr) and \
            isinstance(body[0].value, ast.Constant), f"{init} holds more than a docstring"


def test_no_module_is_too_long() -> None:
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_test_files_have_unique_names() -> None:
    """pytest imports test modules by their basename (no ``__init__.py`` in tests/): two test
    files with one name in different folders break collection of the whole suite."""
    tests = Path(__file__).resolve().parent
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted(tests.rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(tests)} and {path.relative_to(tests)}")
        seen.setdefault(path.name, path)
    assert not clashes, "rename one of each: " + "; ".join(clashes)

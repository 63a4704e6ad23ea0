"""The tree is the architecture: rooms that say what they may import and keep to it, imports
that point one way, and files small enough to read (docs/architecture.md)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fleet", "robot_node", "sim_bridge")
MAX_LINES = 400


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, anywhere in the file (lazy imports too)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in mods else node.module)
            elif isinstance(node, ast.ImportFrom) and node.level:
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                deps.add(f"{package}.{node.module}" if node.module else package)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str]:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return []

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return []


def room_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "fleet" and len(parts) > 1 else parts[0]


def rooms() -> dict[str, Path]:
    return {f"fleet.{p.parent.name}": p for p in sorted((ROOT / "fleet").glob("*/__init__.py"))}


def test_no_module_imports_one_of_its_importers():
    assert _cycle(import_graph()) == []


def test_rooms_import_only_what_their_docstring_allows():
    allowed_by_room = {}
    for room, init in rooms().items():
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc.splitlines()) >= 3, f"{init}: say what the room holds and may import"
        line = re.search(r"^May import: (.*?)\.?$", doc, re.M)
        assert line, f"{init}: its docstring needs a 'May import: ...' line"
        allowed_by_room[room] = set() if line.group(1).startswith("nothing") else {
            r.strip().split(" ")[0] for r in line.group(1).split(",")}
    wrong = []
    for module, deps in import_graph().items():
        room = room_of(module)
        if room not in allowed_by_room:
            continue
        for dep in deps:
            other = room_of(dep)
            if other not in (room, "fleet") and other not in allowed_by_room[room]:
                wrong.append(f"{module} imports {dep}")
    assert wrong == [], "imports a room's docstring does not allow:\n" + "\n".join(wrong)
    rooms_graph = {r: {room_of(d) for m, ds in import_graph().items() if room_of(m) == r
                       for d in ds} - {r} for r in allowed_by_room}
    assert _cycle(rooms_graph) == []  # rooms are layered too


def test_robots_side_never_imports_training_code():
    graph = import_graph()
    shared = [m for m in graph if room_of(m) in ("fleet.policy", "fleet.wire", "fleet.client")
              or m.startswith("robot_node") or re.match(r"fleet\.methods\.\w+\.(network|policy)$", m)]
    bad = [f"{m} -> {d}" for m in shared for d in graph[m]
           if room_of(d) == "fleet.learner" or d.endswith(".learner")]
    assert bad == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_file_over_the_line_limit(package):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these (limit {MAX_LINES} lines): {long}"


def test_nothing_outside_a_method_names_it():
    """A method is one folder and one registration: no other file spells its name as a
    string (the default method name in fleet/registry.py excepted)."""
    methods = [p.parent.name for p in (ROOT / "fleet" / "methods").glob("*/__init__.py")]
    assert {"grasp_point", "levine"} <= set(methods)
    found = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "methods" in path.parts or path.name == "registry.py":
                continue
            text = path.read_text()
            found += [f"{path.relative_to(ROOT)}: {name!r}" for name in methods
                      if re.search(rf"""["']{name}["']""", text)]
    assert found == []

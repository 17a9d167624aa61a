"""The package's import graph: no module imports another that imports it back (directly or
around a circle), and the stages do not reach for the runtime that wires them together."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"
#: modules that build or run the whole gateway; no stage of the request path may import them
WIRING = {"gateway.runtime", "gateway.serve", "gateway.cli", "gateway.demo", "gateway.admin"}
STAGES = {
    "gateway.pipeline",
    "gateway.authenticate",
    "gateway.authz",
    "gateway.extract",
    "gateway.forward",
    "gateway.forward_auth",
    "gateway.sessions",
    "gateway.upstream_headers",
    "gateway.routing",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


#: a pool and the connections it makes are one unit: each names the other's type
ALLOWED = {
    ("gateway.http.pool", "gateway.http.upstream"),
    ("gateway.http.upstream", "gateway.http.pool"),
}


def _imports(path: Path) -> set[str]:
    """The gateway modules a module imports, at run time or for its types only (a circle of
    types is a circle of knowledge too), inside functions included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gateway"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("gateway"))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # `from gateway.http import wire` names a package; count the module when it is one
        graph[name] = {
            m for m in _imports(path) if m in modules and m != name and (name, m) not in ALLOWED
        }
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    """Collaborators are passed in, not imported back: the import graph has no cycle."""
    graph = _graph()
    assert graph.get("gateway.pipeline"), "graph not read"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle():
    """The check above can fail: a circle of three is reported as one."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_stages_do_not_import_the_wiring():
    """No stage reaches for the runtime (no service locator): it is handed what it uses."""
    graph = _graph()
    for stage in STAGES:
        assert stage in graph, stage
        assert not graph[stage] & WIRING, (stage, graph[stage] & WIRING)


def test_every_module_imports_on_its_own():
    """Each module imports in a fresh interpreter with nothing imported before it: an import
    circle through a package's `__init__` (which the graph above does not model) breaks a
    tool or entry point that happens to import its modules in another order."""
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    names = sorted(_module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")

    def load(name: str) -> tuple[str, str]:
        done = subprocess.run(
            [sys.executable, "-c", f"import {name}"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        return name, done.stderr.strip().splitlines()[-1] if done.returncode else ""

    with ThreadPoolExecutor(4) as pool:
        failed = {name: err for name, err in pool.map(load, names) if err}
    assert len(names) > 40
    assert failed == {}

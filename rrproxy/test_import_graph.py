"""The package's import graph has no circles: imports run one way (the front and the
worker on the shared core, never back). Only imports that run when a module loads
count: those inside functions or under `if TYPE_CHECKING:` do not."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parent = module.split(".")
        if not is_package:
            parent.pop()
        parent = parent[: len(parent) - (node.level - 1)]
        base = ".".join(parent + ([node.module] if node.module else []))
    # `from . import x` imports the submodule x when there is one.
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _load_time_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if "TYPE_CHECKING" not in test:
                body += node.body + node.orelse
        elif isinstance(node, ast.Try):
            body += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                body += handler.body
    return found


def import_graph() -> dict[str, set[str]]:
    """rrproxy module -> the rrproxy modules it imports as it loads (tests left out)."""
    paths = {
        _module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if not path.name.startswith(("test_", "fake_"))
    }
    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        names: list[str] = []
        for node in _load_time_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            else:
                names += _resolve(module, path.name == "__init__.py", node)
        graph[module] = {name for name in names if name in paths and name != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_finder_sees_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve_to_modules() -> None:
    graph = import_graph()
    assert "rrproxy.ipc.codec" in graph["rrproxy.ipc.channel"]
    assert "rrproxy.fds" in graph["rrproxy.ipc.channel"]
    assert "rrproxy.front.dispatcher" in graph["rrproxy.front.acceptor"]


def test_rrproxy_has_no_import_circles() -> None:
    assert cycles(import_graph()) == []

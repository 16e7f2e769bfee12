"""The shape of the code: lower layers never import upper ones, and no module imports itself round a cycle.

Every import statement counts, lazy ones inside functions and `TYPE_CHECKING` ones included: a cycle hidden in a
function is still a cycle the next refactor trips over.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("webui", "loaders", "kernels")


def _modules() -> dict[str, Path]:
    found = {"app": ROOT / "app.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            named |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    targets = set()
    for target in named:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            targets.add(target)
    return targets


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def test_loaders_and_kernels_never_import_webui() -> None:
    offenders = {name: sorted(t for t in targets if t.split(".")[0] == "webui")
                 for name, targets in _graph().items() if name.split(".")[0] in ("loaders", "kernels")}  # fmt: skip
    assert {k: v for k, v in offenders.items() if v} == {}


def test_kernels_import_no_loader() -> None:
    graph = _graph()
    assert {n: sorted(t for t in ts if t.startswith("loaders")) for n, ts in graph.items()
            if n.startswith("kernels") and any(t.startswith("loaders") for t in ts)} == {}  # fmt: skip


def test_services_never_import_gradio() -> None:
    for name, path in _modules().items():
        if name.startswith("webui.ui") or not name.startswith("webui"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(m.split(".")[0] == "gradio" for m in names), name


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert cycles == []

"""The import graph of mlwp/ and serving/, read statically with ast (no module is executed).

- No import cycle inside mlwp/ or serving/ through the imports that run when a module is
  imported: module-level statements (under ``if``/``try`` too), not ``if TYPE_CHECKING:``
  blocks (they never run) nor imports inside functions (they run at call time). Such a cycle
  makes importing depend on which module comes first; none is allowed.
- Counting every import (in functions and under TYPE_CHECKING too), only a short list of
  known pairs import each other: a lazy import is how heavy libraries stay out of the DAG
  processor, not a licence to tie modules in knots (preprocessing <-> record_encoder was one,
  hidden that way). A new pair fails; the list may only shrink.
- A package's ``__init__`` is an edge only where something imports it, not from each of its
  submodules (Python initialises the package first, whichever submodule is imported).
- mlwp/ never imports Airflow, operators/, plugins/ or dags/; serving/ never imports Airflow
  or operators/. Every import counts here, in functions and under TYPE_CHECKING too: the
  serving image has no Airflow, and a lazy import still fails there.
  tests/serving/test_import_boundary.py checks the same for serving at run time.
- Every ``mlwp.*`` module imported anywhere in the repository exists: mypy ignores missing
  imports, and a function-level import of a moved module (``mlwp.preprocessing`` is now
  ``mlwp.model.preprocessing``) would otherwise fail only when its task runs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "mlwp": ("airflow", "operators", "plugins", "dags"),
    "serving": ("airflow", "operators"),
}


def _modules(package: str) -> dict[str, Path]:
    """Every module of ``package`` by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, *, module_level: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements; with ``module_level``, only those that run at import time."""
    if not module_level:
        yield from (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
        return
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            todo.extend(node.orelse if _is_type_checking(node) else node.body + node.orelse)
        elif isinstance(node, (ast.Try, ast.With)):
            todo.extend(node.body)
            for extra in ("handlers", "orelse", "finalbody"):
                for part in getattr(node, extra, []):
                    todo.extend(part.body if isinstance(part, ast.ExceptHandler) else [part])


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """The dotted names an import statement loads."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        anchor = module.split(".")
        anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
        base = ".".join([*anchor, base] if base else anchor)
    for alias in node.names:
        yield f"{base}.{alias.name}"  # a submodule, or a name in ``base`` (resolved below)
    yield base


def _graph(package: str, *, module_level: bool) -> dict[str, set[str]]:
    modules = _modules(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = graph.setdefault(name, set())
        for node in _imports(tree, module_level=module_level):
            targets = list(_targets(node, name, path.name == "__init__.py"))
            if isinstance(node, ast.ImportFrom):
                # ``from a import b``: the submodule a.b when there is one, else the module a
                subs = [t for t in targets[:-1] if t in modules]
                targets = subs if len(subs) == len(targets) - 1 else [*subs, targets[-1]]
            edges.update(t for t in targets if t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The groups of modules that import each other (strongly connected, Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[tuple[str, ...]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(tuple(sorted(group)))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


@pytest.mark.parametrize("package", ["mlwp", "serving"])
def test_no_import_cycle(package: str) -> None:
    assert _cycles(_graph(package, module_level=True)) == []


def test_no_new_cycle_through_function_level_imports() -> None:
    """Counting every import, only these known pairs import each other, each inside one
    package and only through a function-level import. A new one fails here (the old
    preprocessing <-> record_encoder pair would have); one that is gone must leave the list."""
    known = [
        ("mlwp.data.partitions", "mlwp.data.storage"),
    ]
    assert _cycles(_graph("mlwp", module_level=False)) == known
    assert _cycles(_graph("serving", module_level=False)) == []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_forbidden_import(package: str) -> None:
    bad = sorted(
        f"{module} imports {target}"
        for module, targets in _graph(package, module_level=False).items()
        for target in targets
        if target.split(".")[0] in FORBIDDEN[package]
    )
    assert bad == []


def test_the_checks_see_cycles_and_forbidden_imports() -> None:
    """The checks themselves: a known cycle and a known forbidden import are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]
    assert _cycles({"a": {"b", "x"}, "b": set()}) == []
    tree = ast.parse(
        "import os\nif TYPE_CHECKING:\n    import airflow\ndef f():\n    from airflow import DAG\n"
    )
    assert [n.names[0].name for n in _imports(tree, module_level=True)] == ["os"]
    assert len(list(_imports(tree, module_level=False))) == 3
    relative = ast.parse("from . import b\nfrom .c import d\n").body
    assert list(_targets(relative[0], "p.a", False)) == ["p.b", "p"]  # type: ignore[arg-type]
    assert list(_targets(relative[1], "p", True)) == ["p.c.d", "p.c"]  # type: ignore[arg-type]


def test_every_imported_mlwp_module_exists() -> None:
    modules = _modules("mlwp")
    missing = []
    for folder in ("mlwp", "serving", "operators", "plugins", "dags", "bench", "tests", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in _imports(ast.parse(path.read_text(), str(path)), module_level=False):
                names = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""] * (node.level == 0)
                )
                missing += [
                    f"{path.relative_to(ROOT)}:{node.lineno} {name}"
                    for name in names
                    if name.split(".")[0] == "mlwp" and name not in modules
                ]
    assert missing == []

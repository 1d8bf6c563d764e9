"""The package's imports go one way: cache <- models <- pipeline <- (mini, eval) <- cli, with no cycle between groups
nor between any two modules.

Read from the source (every ``import`` statement, also those inside functions), so a lazy import cannot hide an
upward edge or a cycle; imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

import ast
from pathlib import Path

import deepforcing

ROOT = Path(deepforcing.__file__).parent
# model_spec turns model options into a generator: it opens the mini model and Wan folders, so it sits beside mini
LAYER = {"_version": 0, "stats": 0, "atomic_write": 0, "cache": 0, "generate_command": 4, "serve": 4, "cli_options": 1, "models": 1,
         "pipeline": 2, "mini": 3, "model_spec": 3, "eval": 3, "cli": 4, "__init__": 5, "__main__": 5}


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path, root: Path) -> str:
    module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
    return module[: -len(".__init__")] if module.endswith(".__init__") else module


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def _imports(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package modules it imports; ``from package import name`` counts as importing the submodule
    ``package.name`` where one exists."""
    paths = {_module_name(path, root): path for path in root.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        found = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith(root.name)}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                if name.startswith(root.name):
                    subs = {f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in paths}
                    found |= subs if len(subs) == len(node.names) else subs | {name}
        edges[module] = found
    return edges


def module_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``edges``: each strongly connected set of two or more modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
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
                cycles.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_no_upward_import():
    bad = []
    for module, targets in _imports().items():
        for target in targets:
            src, dst = _group(module), _group(target)
            if src != dst and LAYER[dst] > LAYER[src]:
                bad.append(f"{module} -> {target}")
            if (src, dst) == ("mini", "eval"):  # peers; the experiment (eval) runs on the mini model, not back
                bad.append(f"{module} -> {target} (peer)")
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_cycle_between_groups():
    graph: dict[str, set[str]] = {}
    for module, targets in _imports().items():
        for target in targets:
            a, b = _group(module), _group(target)
            if a != b:
                graph.setdefault(a, set()).add(b)
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in seen:
            return
        stack.append(node)
        for nxt in graph.get(node, ()):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for node in list(graph):
        visit(node)


def test_no_cycle_between_modules():
    edges = {module: {t for t in targets if t != module} for module, targets in _imports().items()}
    cycles = module_cycles(edges)
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_cycle_finder_sees_function_level_and_package_imports(tmp_path):
    """The reader finds a cycle hidden in a function and one through ``from package import module``, and leaves a
    ``TYPE_CHECKING`` import out."""
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from toy import a\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from toy.sub import d\n")
    (pkg / "sub" / "d.py").write_text("from . import c\n")
    edges = _imports(pkg)
    assert edges["toy.b"] == {"toy.a"} and edges["toy.sub.c"] == set() and edges["toy.sub.d"] == {"toy.sub.c"}
    assert module_cycles(edges) == [["toy.a", "toy.b"]]

"""The package's imports go one way: cache <- models <- pipeline <- (mini, eval) <- cli, with no cycle.

Read from the source (every ``import`` statement, also those inside functions), so a lazy import cannot hide an
upward edge.
"""

import ast
from pathlib import Path

import deepforcing

ROOT = Path(deepforcing.__file__).parent
LAYER = {"_version": 0, "stats": 0, "cache": 0, "generate_command": 4, "serve": 4, "cli_options": 1, "models": 1, "pipeline": 2, "mini": 3, "eval": 3, "cli": 4,
         "__init__": 5, "__main__": 5}


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts)
        if module.endswith(".__init__"):
            module = module[: -len(".__init__")]
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("deepforcing")}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                if name.startswith("deepforcing"):
                    found.add(name)
        edges[module] = found
    return edges


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

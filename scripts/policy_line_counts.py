"""Lines of code per cache policy class (docstrings and blank lines excluded) — the size of each named policy.

    python scripts/policy_line_counts.py [path/to/policies.py]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[1] / "src" / "deepforcing" / "cache" / "policies.py"


def code_lines(source: list[str], node: ast.AST) -> int:
    """Non-blank lines of ``node`` minus the lines of its (and its methods') docstrings."""
    skip = set()
    for sub in ast.walk(node):
        body = getattr(sub, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            skip |= set(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for n in range(node.lineno, node.end_lineno + 1) if n not in skip and source[n - 1].strip())


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    text = path.read_text()
    source = text.splitlines()
    tree = ast.parse(text)
    print("| class | bases | code lines |")
    print("|---|---|---|")
    total = 0
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            n = code_lines(source, node)
            total += n
            print(f"| {node.name} | {', '.join(ast.unparse(b) for b in node.bases)} | {n} |")
        elif isinstance(node, ast.FunctionDef):
            n = code_lines(source, node)
            total += n
            print(f"| {node.name}() | function | {n} |")
    print(f"| **file** | | {sum(1 for line in source if line.strip())} non-blank lines |")


if __name__ == "__main__":
    main()

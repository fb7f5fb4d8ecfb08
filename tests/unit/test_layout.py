"""The tree's shape: no import circle between tunnelwatch modules, no module over 400 lines, wings in order.

Imports are read from the source (ast), at any depth: a function-level import still ties two modules
together; only imports under `if TYPE_CHECKING:` are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "daemon" / "tunnelwatch"
MAX_LINES = 400
#: what each wing may import (besides itself and the bottom modules verdict/record); the data flow
#: packet -> classify -> policy -> inline -> report, with config read by all and the tools on top
ALLOWED: dict[str, set[str]] = {
    "classify": {"config"},
    "config": {"classify"},  # config checks classifier names and budgets
    "policy": {"classify", "config", "appliance", "report"},
    "report": {"config", "appliance"},
    "appliance": {"config", "policy", "report", "inline"},
    "inline": {"classify", "config", "policy", "report", "appliance"},
    "offline": {"classify", "config", "policy", "inline"},
    "lab": set(),
    "isp": {"report", "policy"},
}


def _module(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tunnelwatch"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if (PKG.parent / (full.replace(".", "/") + ".py")).exists() else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("tunnelwatch"))
    return out


def _graph() -> dict[str, set[str]]:
    return {_module(p): _imports(p) for p in PKG.rglob("*.py")}


def test_no_import_circle() -> None:
    graph = _graph()
    # a package's __init__ is imported with any of its modules: not an edge of its own
    edges = {m: {d for d in deps if d in graph and d != m and not m.startswith(d + ".")}
             for m, deps in graph.items()}
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if seen.get(d) == 1:
                cycles.append([*stack[stack.index(d):], d])
            elif d not in seen:
                visit(d)
        stack.pop()
        seen[m] = 2

    for m in sorted(edges):
        if m not in seen:
            visit(m)
    assert cycles == []


def test_no_module_over_400_lines() -> None:
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_wings_import_only_downstream() -> None:
    wrong: list[str] = []
    for m, deps in _graph().items():
        parts = m.split(".")
        if len(parts) < 3 or parts[1] not in ALLOWED:
            continue
        wing = parts[1]
        for d in deps:
            dw = d.split(".")
            if len(dw) < 2 or dw[1] in (wing, "verdict", "record") or dw[1] == "__version__":
                continue
            if len(dw) == 2 and not (PKG / dw[1]).is_dir():
                continue  # a top-level module (cli) or the package itself
            if dw[1] not in ALLOWED[wing]:
                wrong.append(f"{m} -> {d}")
    assert wrong == []

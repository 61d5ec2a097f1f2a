"""No import cycles between mltrain's modules, counting imports inside functions too.

A cycle means two rooms that cannot be understood (or tested, or moved) one without the
other; lazy imports inside functions hide cycles from Python but not from the reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mltrain

ROOT = Path(mltrain.__file__).parent
PLUGINS = ROOT.parent / "hydra_plugins" / "mltrain_plugins"  # Hydra imports these, and they import mltrain

def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)  # mltrain/... or hydra_plugins/...
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every mltrain module ``path`` imports, anywhere in the file (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py") if "conf" not in p.relative_to(ROOT).parts[:1]}
    files.update({module_name(p): p for p in PLUGINS.glob("*.py")})
    known = set(files)
    edges = {name: imports_of(path, name, known) for name, path in files.items()}
    # importing a.b.c runs a/__init__ and a/b/__init__ first: those are real edges too
    for name in list(edges):
        parent = name.rpartition(".")[0]
        while parent:
            if parent in edges and parent != name:
                edges[name].discard(parent)  # a package's own __init__ importing its children is not a cycle source
            parent = parent.rpartition(".")[0]
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)

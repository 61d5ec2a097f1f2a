"""No process-wide speed hacks: every thread and library in the process sees the interpreter as Python made it.

A ``sys.modules[name] = None`` entry (to skip an optional import while another module loads) is seen by every
other thread importing at that moment; a ``gc.disable()`` that is not undone in the same place leaves the
collector off for everyone. The cost these saved is measured and accepted instead (see the modules' docstrings).
"""

from __future__ import annotations

import ast
from pathlib import Path

import mltrain

ROOT = Path(mltrain.__file__).parent


def _files() -> list[Path]:
    return [*ROOT.rglob("*.py"), *(ROOT.parent / "hydra_plugins" / "mltrain_plugins").glob("*.py")]


def _is_sys_modules(node: ast.expr) -> bool:
    return isinstance(node, ast.Subscript) and ast.unparse(node.value) == "sys.modules"


def test_no_module_is_hidden_by_a_none_entry_in_sys_modules() -> None:
    found = []
    for path in _files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value is None \
                    and any(_is_sys_modules(target) for target in node.targets):
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)


def _restores_collector(func: ast.FunctionDef) -> bool:
    """A ``@contextmanager`` whose ``finally`` turns the collector back on: a scope that is always undone."""
    if not any("contextmanager" in ast.unparse(d) for d in func.decorator_list):
        return False
    return any(isinstance(node, ast.Try) and "gc.enable()" in "\n".join(ast.unparse(n) for n in node.finalbody)
               for node in ast.walk(func))


def test_the_garbage_collector_is_paused_only_in_a_scope_that_restores_it() -> None:
    found = []
    for path in _files():
        tree = ast.parse(path.read_text(), str(path))
        scopes = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and _restores_collector(f)]
        allowed = {id(call) for func in scopes for call in ast.walk(func)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("gc.disable", "gc.freeze") \
                    and id(node) not in allowed:
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "\n".join(found)

"""The project's own import graph, read from the source (no import is executed).

Every ``import`` statement counts, including those deferred into functions: a deferred
import still runs when that code path does, so it is still a dependency.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tasks", "flows")


def module_file(module: str) -> Path | None:
    """The file that defines ``module`` in this project, or None for a third-party module."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> list[str]:
    return sorted(
        module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if p.is_file()
    )


@cache
def direct_imports(module: str) -> frozenset[str]:
    """Project modules that ``module`` imports, anywhere in its body."""
    path = module_file(module)
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import mod`` names a module when pkg/mod.py exists
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES and module_file(name) is not None:
                found.add(name)
    found.discard(module)
    return frozenset(found)


def with_parents(module: str) -> set[str]:
    """Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def transitive_imports(module: str) -> set[str]:
    """Every project module that importing and running ``module`` can load, itself included."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        for name in with_parents(current):
            if name not in seen:
                seen.add(name)
                todo.extend(direct_imports(name))
    return seen


def find_cycle(modules: list[str]) -> list[str] | None:
    """One import cycle among ``modules`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(direct_imports(node)):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in modules:
        if start not in state and (cycle := visit(start)):
            return cycle
    return None

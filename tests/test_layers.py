"""The package's architecture holds: each layer imports only layers below it, no cycle.

The order is docs/architecture.md's. Type-checking-only imports count too: a cycle
through a type is still a tangle for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "proxy"

# Bottom to top. `proxy` itself (the version) is the floor; `__main__` the roof.
LAYERS = (
    "proxy",
    "proxy.errors",
    "proxy.config",
    "proxy.rollout",
    "proxy.records",
    "proxy.telemetry",
    "proxy.http",
    "proxy.gateway",
    "proxy.status",
    "proxy.preview",
    "proxy.admin",
    "proxy.page",
    "proxy.app",
    "proxy.workers",
    "proxy.demo",
    "proxy.control",
    "proxy.__main__",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    found = [i for i, name in enumerate(LAYERS) if module == name or module.startswith(name + ".")]
    assert found, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return max(found)


def imports_of(path: Path) -> set[str]:
    """The proxy modules a file imports (`from proxy import x` names x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("proxy")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("proxy"):
            assert node.level == 0, f"{path}: relative import"
            if node.module == "proxy":
                found |= {
                    "proxy" if a.name == "__version__" else f"proxy.{a.name}" for a in node.names
                }
            else:
                found.add(node.module)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_layers_below(module: str) -> None:
    mine = layer_of(module)
    upward = sorted(t for t in imports_of(MODULES[module]) if layer_of(t) > mine)
    assert not upward, f"{module} (layer {LAYERS[mine]}) imports upward: {upward}"


def test_no_import_cycle() -> None:
    graph = {m: {t for t in imports_of(p) if t in MODULES and t != m} for m, p in MODULES.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            for nxt in graph[stack.pop()]:
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    cycles = sorted(m for m in graph if reaches(m, m))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_layer_list_names_real_modules() -> None:
    for name in LAYERS:
        assert any(m == name or m.startswith(name + ".") for m in MODULES), name

"""The documented public surface imports, and the agent uses only the public surface of the others.

The arrows between parts and rooms are import-linter contracts
(``[tool.importlinter]`` in pyproject.toml, run by scripts/test.sh) and the
cycle check is scripts/check_cycles.py (tests/test_check_cycles.py); this file
adds what import-linter does not say: no private module or name of sync,
models or bridge is imported by the agent.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "vsm_edge.sync": ROOT / "sync",
    "vsm_edge.models": ROOT / "models",
    "vsm_edge.bridge": ROOT / "firmware-bridge" / "python",
    "vsm_edge.agent": ROOT / "agent",
}

def absolute_imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every absolute import in ``path``.

    ``from a.b import c`` yields ``a.b.c``: ``c`` may be a module.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


@pytest.mark.parametrize("name", [*sorted(PACKAGES), "vsm_edge.sync.testing"])
def test_public_names_import(name: str) -> None:
    module = importlib.import_module(name)
    for public in module.__all__:
        assert hasattr(module, public), f"{name}.__all__ lists missing {public}"


def test_agent_uses_only_the_public_surface_of_the_other_parts() -> None:
    found = []
    for path in PACKAGES["vsm_edge.agent"].rglob("*.py"):
        for line, target in absolute_imports(path):
            # vsm_edge.<part>.<module or name>...: private when any piece past the part is
            pieces = target.split(".")
            if pieces[0] != "vsm_edge" or len(pieces) < 3 or pieces[1] == "agent":
                continue
            if any(piece.startswith("_") for piece in pieces[2:]):
                found.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert not found, "the agent imports private modules or names:\n" + "\n".join(found)

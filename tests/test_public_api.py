"""The documented public surface imports, and the arrows between parts hold."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "vsm_edge.sync": ROOT / "sync",
    "vsm_edge.models": ROOT / "models",
    "vsm_edge.bridge": ROOT / "firmware-bridge" / "python",
    "vsm_edge.agent": ROOT / "agent",
}
# Who may import whom (DESIGN.md "Arrows").
ALLOWED = {
    "vsm_edge.sync": set(),
    "vsm_edge.models": set(),
    "vsm_edge.bridge": set(),
    "vsm_edge.agent": {"vsm_edge.sync", "vsm_edge.models", "vsm_edge.bridge"},
}


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_public_names_import(name: str) -> None:
    module = importlib.import_module(name)
    for public in module.__all__:
        assert hasattr(module, public), f"{name}.__all__ lists missing {public}"


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_arrows_between_parts(name: str) -> None:
    for path in PACKAGES[name].rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            for target in targets:
                if not target.startswith("vsm_edge."):
                    continue
                part = ".".join(target.split(".")[:2])
                assert part == name or part in ALLOWED[name], f"{path}: {name} imports {target}"

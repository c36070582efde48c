"""scripts/check_cycles.py finds cycles, and the real import graph has none."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"agent": "agent", "sync": "sync", "models": "models", "bridge": "firmware-bridge/python"}


def _script() -> ModuleType:
    path = ROOT / "scripts" / "check_cycles.py"
    spec = importlib.util.spec_from_file_location("check_cycles", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_components_are_found() -> None:
    scc = _script().strongly_connected
    assert scc({"a": ["b"], "b": ["c"], "c": []}) == []
    assert scc({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert scc({"a": ["a"]}) == [["a"]]
    two = scc({"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c", "a"]})
    assert sorted(two) == [["a", "b"], ["c", "d"]]


def test_rooms() -> None:
    room_of = _script().room_of
    assert room_of("vsm_edge.agent.web.routes") == "vsm_edge.agent.web"
    assert room_of("vsm_edge.agent._errors") == "vsm_edge.agent._errors"
    assert room_of("vsm_edge.sync._gossip") == "vsm_edge.sync._gossip"
    assert room_of("vsm_edge.agent") == "vsm_edge.agent"


def test_the_import_graph_has_no_cycle(tmp_path: Path) -> None:
    # the import names mapped onto the folders, as scripts/test.sh does in .typecheck/
    package = tmp_path / "vsm_edge"
    package.mkdir()
    for name, folder in FOLDERS.items():
        (package / name).symlink_to(ROOT / folder)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check_cycles.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no import cycle" in done.stdout

"""docs/units.md's example runs, and ``vsm-edge init`` scaffolds a node that runs.

Both in fresh processes, without PYTHONPATH, from a working directory that is
not the config's: the example is loaded from the file next to node.toml
(``kind = "loadavg_unit.py:LoadAvg"``) and its reading shows in
``vsm-edge status --json``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vsm_edge.agent import load_unit, parse_config
from vsm_edge.agent.cli.init import UNIT_SKELETON
from vsm_edge.agent.vsm.unit import BUILTIN_KINDS

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parent.parent / "docs" / "units.md"
WAIT_S = 60.0  # a bound on start-up and the first readings (about 2 s here)
STOP_S = 15.0


def example() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- the example:[^\n]*-->\n```python\n(.*?)```\n", text, re.S)
    assert match, "docs/units.md has no marked example"
    return match.group(1)


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONUNBUFFERED": "1"}


def vsm_edge(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vsm_edge.agent", *argv],
        capture_output=True, text=True, timeout=WAIT_S, check=False, env=env(), cwd="/",
    )  # fmt: skip


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Any]:
    """Starts ``vsm-edge run --config CONFIG`` (a fresh process); stops it at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    log = tmp_path / "agent.log"

    def start(config: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vsm_edge.agent", "run", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env(), cwd="/",
            )  # fmt: skip
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_status(
    proc: subprocess.Popen[bytes], config: Path, log: Path, ready: Any
) -> dict[str, Any]:
    """``vsm-edge status --json --config CONFIG`` until ``ready(doc)``."""
    deadline = time.monotonic() + WAIT_S
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the agent exited with {proc.returncode}:\n{log.read_text()}")
        done = vsm_edge("status", "--json", "--config", str(config))
        if done.returncode == 0:
            doc: dict[str, Any] = json.loads(done.stdout)
            if ready(doc):
                return doc
            last = done.stdout[-2000:]
        else:
            last = done.stderr
        time.sleep(0.5)
    raise AssertionError(f"not ready within {WAIT_S} s; last: {last}\n{log.read_text()}")


def test_the_example_is_the_skeleton_init_writes() -> None:
    assert example() == UNIT_SKELETON


def test_the_documented_example_runs_in_a_fresh_process_without_pythonpath(
    tmp_path: Path, agent: Any
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "loadavg_unit.py").write_text(example())
    config = conf / "node.toml"
    config.write_text(
        '[node]\nid = "doc-example"\ndata_dir = "data"\n'
        '[broker]\nurl = "embedded"\n[discovery]\nenabled = false\n[status]\nport = 0\n'
        '[[units]]\nname = "load"\nkind = "loadavg_unit.py:LoadAvg"\n'
        "[units.options]\nperiod_s = 0.5\n"
    )
    proc = agent(config)

    def ready(doc: dict[str, Any]) -> bool:
        unit = doc["s1"]["units"].get("load", {})
        return unit.get("emitted", 0) >= 2 and unit.get("detail", {}).get("last") is not None

    doc = wait_status(proc, config, tmp_path / "agent.log", ready)
    unit = doc["s1"]["units"]["load"]
    assert unit["kind"] == f"{conf / 'loadavg_unit.py'}:LoadAvg"
    assert unit["state"] == "running"
    assert unit["readings"] == ["load_1"]
    assert unit["commands"] == ["period"]
    assert unit["detail"]["path"] == "/proc/loadavg"
    assert isinstance(unit["detail"]["last"], float)  # read from the host's /proc/loadavg
    assert unit["detail"]["last"] >= 0.0


def test_init_then_run_gives_a_running_node_with_readings(tmp_path: Path, agent: Any) -> None:
    node = tmp_path / "mynode"
    done = vsm_edge("init", str(node), "--id", "init-test", "--status-port", "0")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in node.iterdir()) == [
        "loadavg_unit.py",
        "node.key",
        "node.pub",
        "node.toml",
    ]
    assert (node / "node.key").stat().st_mode & 0o777 == 0o600
    assert (node / "loadavg_unit.py").read_text() == UNIT_SKELETON
    toml = (node / "node.toml").read_text()
    assert 'kind = "loadavg_unit.py:LoadAvg"' in toml
    assert toml.count("\n#") > 10  # commented

    config = node / "node.toml"
    proc = agent(config)

    def ready(doc: dict[str, Any]) -> bool:
        units = doc["s1"]["units"]
        return all(units.get(u, {}).get("emitted", 0) >= 1 for u in ("room", "load"))

    doc = wait_status(proc, config, tmp_path / "agent.log", ready)
    assert doc["node"]["id"] == "init-test"
    assert doc["s1"]["units"]["room"]["readings"] == ["celsius"]
    assert doc["s1"]["units"]["load"]["readings"] == ["load_1"]


def test_init_refuses_to_overwrite_and_says_how(tmp_path: Path) -> None:
    assert vsm_edge("init", str(tmp_path), "--id", "a").returncode == 0
    again = vsm_edge("init", str(tmp_path), "--id", "a")
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"vsm-edge init: {tmp_path / 'node.toml'} exists (use --force to replace it)"
    ]
    key = (tmp_path / "node.key").read_text()
    forced = vsm_edge("init", str(tmp_path), "--id", "a", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "node.key").read_text() != key


def test_init_refuses_a_bad_id_in_one_line(tmp_path: Path) -> None:
    done = vsm_edge("init", str(tmp_path / "x"), "--id", "no spaces")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "vsm-edge init: --id must be 1-64 characters of A-Z a-z 0-9 _ -, got 'no spaces'"
    ]
    assert not (tmp_path / "x").exists()


README = DOC.parent.parent / "README.md"


def readme_kind_examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Unit kinds") :]
    section = section[: section.index("\n## ", 1)]
    return [textwrap.dedent(b) for b in re.findall(r"```toml\n(.*?)```", section, re.S)]


def test_the_readme_lists_each_built_in_kind_with_an_example_that_loads() -> None:
    examples = readme_kind_examples()
    kinds = set()
    for block in examples:
        cfg = parse_config({"node": {"id": "n1"}, **tomllib.loads(block)})
        (unit,) = cfg.units
        kinds.add(unit.kind)
        if ":" not in unit.kind:  # a built-in kind: it loads with these options
            load_unit(unit.name, unit.kind, unit.options)
    assert set(BUILTIN_KINDS) <= kinds

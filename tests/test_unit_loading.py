"""Unit kinds from files and plugin directories, without PYTHONPATH; each failure one line.

``kind = "file.py:Class"`` loads the file (relative to the config file) with
importlib; ``[node] plugin_dirs`` makes ``module:Class`` importable from
those directories. Failures are checked in-process (the message) and in fresh
``vsm-edge run`` processes (exactly one line on stderr, no traceback).
Simulated sensors seed from the node id and the unit name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from support.vsm import config, running

from vsm_edge.agent import ConfigError, UnitError, load_config, load_unit

TIMEOUT_S = 60

GOOD = """\
from vsm_edge.agent import ReadingSpec

class Thing:
    def __init__(self, name, options):
        self.readings = (ReadingSpec("x"),)
        self.commands = ()
        self.options = dict(options)

    async def run(self, ctx):
        ctx.emit("x", 1.0)
"""


def node_toml(tmp: Path, kind: str, node: str = "") -> Path:
    path = tmp / "node.toml"
    path.write_text(
        f'[node]\nid = "n1"\ndata_dir = "{tmp / "data"}"\n{node}\n'
        '[discovery]\nenabled = false\n[broker]\nurl = "mqtt://127.0.0.1:1"\n'
        "[status]\nport = 0\n"
        f'[[units]]\nname = "u"\nkind = "{kind}"\n'
    )
    return path


def test_a_file_kind_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "plug.py").write_text(GOOD)
    cfg = load_config(node_toml(tmp_path / "conf", "plug.py:Thing"))
    kind = cfg.units[0].kind
    assert kind == f"{tmp_path / 'conf' / 'plug.py'}:Thing"
    unit = load_unit("u", kind, {"a": 1})
    assert type(unit).__name__ == "Thing"
    assert unit.options == {"a": 1}  # type: ignore[attr-defined]
    again = load_unit("u2", kind, {})
    assert type(again) is type(unit)  # the file is loaded once


def test_an_absolute_file_kind_stays(tmp_path: Path) -> None:
    (tmp_path / "plug.py").write_text(GOOD)
    (tmp_path / "conf").mkdir()
    cfg = load_config(node_toml(tmp_path / "conf", f"{tmp_path / 'plug.py'}:Thing"))
    assert cfg.units[0].kind == f"{tmp_path / 'plug.py'}:Thing"


def test_plugin_dirs_make_module_kinds_importable(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    (plugins / "acme_units_pkg").mkdir(parents=True)
    (plugins / "acme_units_pkg" / "__init__.py").write_text("")
    (plugins / "acme_units_pkg" / "pumps.py").write_text(
        "from ._shared import GOOD_CLASS as Pump\n"
    )
    (plugins / "acme_units_pkg" / "_shared.py").write_text(
        GOOD.replace("class Thing", "class GOOD_CLASS")
    )
    (plugins / "acme_flat_unit.py").write_text(GOOD)
    cfg = load_config(
        node_toml(tmp_path, "acme_units_pkg.pumps:Pump", node='plugin_dirs = ["plugins"]')
    )
    assert cfg.node.plugin_dirs == (plugins,)
    unit = load_unit("u", cfg.units[0].kind, {}, plugin_dirs=cfg.node.plugin_dirs)
    assert type(unit).__name__ == "GOOD_CLASS"  # a package with a relative import
    flat = load_unit("f", "acme_flat_unit:Thing", {}, plugin_dirs=[plugins])
    assert type(flat).__name__ == "Thing"


def test_without_plugin_dirs_a_module_in_them_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "acme_hidden_unit.py").write_text(GOOD)
    with pytest.raises(UnitError) as err:
        load_unit("u", "acme_hidden_unit:Thing", {})
    assert str(err.value) == (
        "unit u: unit kind 'acme_hidden_unit:Thing': cannot import acme_hidden_unit: "
        "No module named 'acme_hidden_unit'"
    )


def test_plugin_dirs_must_be_a_list_of_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.plugin_dirs: expected a list of paths"):
        load_config(node_toml(tmp_path, "simulated-sensor", node='plugin_dirs = "plugins"'))


# name -> (file text or None for no file, kind, the one line's tail)
FAILURES: dict[str, tuple[str | None, str, str]] = {
    "file missing": (None, "plug.py:Thing", "no such file {dir}/plug.py"),
    "syntax error": (
        "def (:\n",
        "plug.py:Thing",
        "loading {dir}/plug.py failed: SyntaxError: invalid syntax (plug.py, line 1)",
    ),
    "import error inside": (
        "import no_such_dependency_xyz\n",
        "plug.py:Thing",
        "loading {dir}/plug.py failed: ModuleNotFoundError: "
        "No module named 'no_such_dependency_xyz'",
    ),
    "raises at import": (
        "raise RuntimeError('boom\\nsecond line')\n",
        "plug.py:Thing",
        "loading {dir}/plug.py failed: RuntimeError: boom second line",
    ),
    "no such class": (GOOD, "plug.py:Other", "plug.py has no Other"),
    "not a unit": ("class Thing:\n    def __init__(self, n, o): pass\n", "plug.py:Thing", ""),
    "constructor raises": (
        "class Thing:\n    def __init__(self, n, o): raise ValueError('bad wiring')\n",
        "plug.py:Thing",
        "failed to start: ValueError: bad wiring",
    ),
}


def expected_line(case: str, tmp: Path) -> str:
    _, kind, tail = FAILURES[case]
    full = f"{tmp / kind.partition(':')[0]}:{kind.partition(':')[2]}"
    if case == "not a unit":
        return f"unit u ({full}): "
    if case == "constructor raises":
        return f"unit u ({full}) {tail}"
    return f"unit u: unit kind '{full}': {tail.format(dir=tmp)}"


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_a_loading_failure_is_one_line_naming_unit_kind_and_cause(
    tmp_path: Path, case: str
) -> None:
    text, kind, _ = FAILURES[case]
    if text is not None:
        (tmp_path / "plug.py").write_text(text)
    cfg = load_config(node_toml(tmp_path, kind))
    with pytest.raises(UnitError) as err:
        load_unit("u", cfg.units[0].kind, {})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(expected_line(case, tmp_path))
    if case == "not a unit":
        assert message.endswith("is not a unit (readings, commands, run)")


@pytest.mark.integration
@pytest.mark.parametrize("case", ["file missing", "syntax error", "raises at import", "not a unit"])
def test_in_a_fresh_process_a_loading_failure_is_one_line_on_stderr(
    tmp_path: Path, case: str
) -> None:
    text, kind, _ = FAILURES[case]
    if text is not None:
        (tmp_path / "plug.py").write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "vsm_edge.agent", "run", "--config", str(node_toml(tmp_path, kind))],
        capture_output=True, text=True, timeout=TIMEOUT_S, check=False, env=env, cwd="/",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("vsm-edge run: " + expected_line(case, tmp_path))
    assert "Traceback" not in done.stderr


def test_a_firmware_option_error_names_the_kind_too() -> None:
    with pytest.raises(UnitError) as err:
        load_unit("bench", "firmware-bridge", {})
    assert str(err.value).startswith("unit bench (firmware-bridge): option device")


# -- simulated sensors: seeded per node and unit -----------------------------------


async def _first_values(node: str, name: str = "t", seed: int | None = None) -> list[float]:
    options: dict[str, object] = {"period_s": 1.0, "noise": 5.0}
    if seed is not None:
        options["seed"] = seed
    cfg = config(
        {
            "node": {"id": node},
            "units": [{"name": name, "kind": "simulated-sensor", "options": options}],
        }
    )
    values: list[float] = []
    async with running(cfg) as rt:
        rt.on_reading.append(lambda unit, reading, value, stamp: values.append(value))
        while len(values) < 3:
            await trio.sleep(0.5)
        rt.stop()
    return values[:3]


async def test_two_nodes_with_the_same_unit_config_report_different_values(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = await _first_values("node-a"), await _first_values("node-b")
    assert a != b
    assert await _first_values("node-a") == a  # still deterministic per node and unit
    assert await _first_values("node-a", name="t2") != a


async def test_an_explicit_seed_is_the_same_on_every_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    assert await _first_values("node-a", seed=7) == await _first_values("node-b", seed=7)

"""Configuration: the example loads, defaults hold, every error names its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsm_edge.agent import ConfigError, OverflowPolicy, Subsystem, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "node.toml"


def test_the_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.node.id == "greenhouse-1"
    assert cfg.node.data_dir == EXAMPLE.parent / "vsm-data"
    assert cfg.node.key_file == EXAMPLE.parent / "keys" / "node.key"
    assert cfg.broker.mode == "embedded"
    assert cfg.s3.budgets[Subsystem.S1].capacity == 2000
    assert cfg.s3.budgets[Subsystem.S2].refill_per_s == 50  # default kept beside overrides
    assert cfg.bus.channels[Subsystem.S4].window_ms == 500
    assert cfg.bus.channels[Subsystem.S1].overflow is OverflowPolicy.DROP_OLDEST
    assert len(cfg.s5.admin_keys) == 1
    assert [u.name for u in cfg.units] == ["air-temp", "soil-moisture", "vent"]
    assert cfg.units[0].options["resolution"] == 0.5
    assert cfg.source == EXAMPLE


def test_defaults_match_the_issue() -> None:
    cfg = parse_config({"node": {"id": "n"}})
    windows = {s: c.window_ms for s, c in cfg.bus.channels.items()}
    assert windows == {
        Subsystem.S1: 50,
        Subsystem.S2: 100,
        Subsystem.S3: 200,
        Subsystem.S4: 500,
        Subsystem.S5: 1000,
        Subsystem.ALGEDONIC: 10,
    }
    budgets = {s: (b.capacity, b.refill_per_s) for s, b in cfg.s3.budgets.items()}
    assert budgets == {
        Subsystem.S1: (2000, 100),
        Subsystem.S2: (1000, 50),
        Subsystem.S3: (1000, 50),
        Subsystem.S4: (500, 25),
        Subsystem.S5: (250, 10),
    }
    assert dict(cfg.s4.timescales_s) == {
        Subsystem.S1: 1,
        Subsystem.S2: 10,
        Subsystem.S3: 60,
        Subsystem.S4: 300,
        Subsystem.S5: 1800,
    }
    assert (cfg.s2.damping, cfg.s2.min_conflicts, cfg.s2.oscillation_window_s) == (0.7, 3, 5.0)
    assert (cfg.s4.warning_ratio, cfg.s4.overflow_ratio, cfg.s4.clock_skew_s) == (1.3, 1.5, 30)
    assert cfg.algedonic.escalate_after_s == 30
    assert cfg.runtime.shutdown_timeout_s == 5


BAD: list[tuple[dict[str, Any], str]] = [
    (
        {"s3": {"budgets": {"s1": {"capacity": -1}}}},
        "config error: s3.budgets.s1.capacity: must be > 0, got -1",
    ),
    (
        {"s3": {"budgets": {"s9": {"capacity": 1}}}},
        "config error: s3.budgets.s9: unknown subsystem",
    ),
    (
        {"s3": {"budgets": {"s1": {"capacty": 1}}}},
        "config error: s3.budgets.s1.capacty: unknown key",
    ),
    ({"s2": {"damping": "high"}}, "config error: s2.damping: expected a number, got a string"),
    (
        {"s2": {"min_conflicts": 2.5}},
        "config error: s2.min_conflicts: expected an integer, got a number",
    ),
    (
        {"bus": {"channels": {"s4": {"overflow": "spill"}}}},
        "config error: bus.channels.s4.overflow: must be one of",
    ),
    ({"status": {"host": "0.0.0.0"}}, "config error: status.host: must be a loopback address"),
    ({"status": {"port": 70000}}, "config error: status.port: must be <= 65535, got 70000"),
    ({"status": {"head_timeout_s": 0}}, "config error: status.head_timeout_s: must be > 0"),
    (
        {"broker": {"url": "http://x"}},
        'config error: broker.url: must be "embedded", "mdns" or mqtt[s]://',
    ),
    (
        {"discovery": {"interfaces": ["eth0"]}},
        "config error: discovery.interfaces[0]: expected an IP address",
    ),
    ({"s5": {"admin_keys": ["abcd"]}}, "config error: s5.admin_keys[0]: expected 64 hex digits"),
    (
        {"s5": {"safe_mode_exit_pain": 0.9}},
        "config error: s5.safe_mode_exit_pain: must be < safe_mode_pain",
    ),
    (
        {"s4": {"overflow_ratio": 1.2}},
        "config error: s4.overflow_ratio: must be >= warning_ratio (1.3), got 1.2",
    ),
    ({"s4": {"timescales_s": {"s1": 0}}}, "config error: s4.timescales_s.s1: must be > 0, got 0"),
    (
        {"runtime": {"shutdown_timeout_s": 9}},
        "config error: runtime.shutdown_timeout_s: must be <= 5, got 9",
    ),
    (
        {"units": [{"name": "a", "kind": "x"}, {"name": "a", "kind": "y"}]},
        "config error: units[1].name: duplicate",
    ),
    (
        {"units": [{"name": "a b", "kind": "x"}]},
        "config error: units[0].name: must be 1-64 characters",
    ),
    ({"units": {"name": "a"}}, "config error: units: expected an array of tables"),
    ({"extra": 1}, "config error: extra: unknown key"),
    ({"node": {"id": "n", "mesh": "a/b"}}, "config error: node.mesh: must be 1-64 characters"),
    ({"node": {}}, "config error: node.id: required"),
]


@pytest.mark.parametrize(("patch", "message"), BAD)
def test_config_errors_name_the_key(patch: dict[str, Any], message: str) -> None:
    data: dict[str, Any] = {"node": {"id": "n"}, **patch}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value).startswith(message)
    assert info.value.key == message.split(": ")[1]


def test_load_config_reports_bad_toml_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nid = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)


def test_unknown_unit_kind_is_an_error_at_runtime_build() -> None:
    from vsm_edge.agent import Runtime, UnitError

    cfg = parse_config({"node": {"id": "n"}, "units": [{"name": "u", "kind": "no-such-kind"}]})
    with pytest.raises(UnitError, match="unknown unit kind 'no-such-kind'"):
        Runtime(cfg)
    cfg = parse_config(
        {
            "node": {"id": "n"},
            "units": [{"name": "u", "kind": "simulated-sensor", "options": {"nois": 1}}],
        }
    )
    with pytest.raises(UnitError, match="unknown option 'nois'"):
        Runtime(cfg)


SECTIONS = [
    "node",
    "broker",
    "discovery",
    "status",
    "bus",
    "runtime",
    "s2",
    "s3",
    "s4",
    "s5",
    "algedonic",
    "units",
]
KEYS = [
    "id",
    "mesh",
    "zone",
    "url",
    "port",
    "host",
    "capacity",
    "window_ms",
    "overflow",
    "channels",
    "budgets",
    "s1",
    "s4",
    "algedonic",
    "damping",
    "refill_per_s",
    "admin_keys",
    "timescales_s",
    "interfaces",
    "tls",
    "name",
    "kind",
    "options",
    "safe_mode_pain",
    "warning_ratio",
    "x",
]
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(SECTIONS), values, max_size=5))
def test_any_mapping_is_a_config_or_a_config_error(data: dict[str, Any]) -> None:
    data.setdefault("node", {"id": "n"})
    try:
        cfg = parse_config(data)
    except ConfigError as exc:
        message = str(exc)
    else:
        message = f"config error: (none: {cfg.node.id})"
    assert message.startswith("config error: ")

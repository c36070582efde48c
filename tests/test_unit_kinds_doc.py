"""docs/unit-kinds.md: every TOML example is a valid agent config whose units load."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from vsm_edge.agent import parse_config
from vsm_edge.agent.vsm.unit import load_unit

DOC = Path(__file__).resolve().parent.parent / "docs" / "unit-kinds.md"
EXAMPLES = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)


def test_the_page_has_one_example_per_kind() -> None:
    kinds = [tomllib.loads(text)["units"][0]["kind"] for text in EXAMPLES]
    assert kinds == ["modbus", "mqtt-source"]


@pytest.mark.parametrize("text", EXAMPLES, ids=["modbus", "mqtt-source"])
def test_each_example_is_a_config_whose_unit_loads(text: str) -> None:
    data = tomllib.loads(text)
    cfg = parse_config({"node": {"id": "n1", "mesh": "m", "zone": "z"}, **data})
    for entry in cfg.units:
        made = load_unit(entry.name, entry.kind, entry.options)
        assert made.readings
        assert made.commands

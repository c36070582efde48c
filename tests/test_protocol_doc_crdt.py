"""docs/protocol.md §3 shows exactly what the code encodes (the doc cannot rot)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.crdt_examples import EXAMPLES, render

from vsm_edge.sync import AWSet, CausalContext, GCounter, LWWRegister, ORMap, PNCounter
from vsm_edge.sync._cbor import loads

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def _section3() -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index("## 3. CRDT payloads")
    end = text.index("\n## 4.", start)
    return text[start:end]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_in_doc_matches_code(name: str) -> None:
    block = render(name)
    assert block in _section3(), f"docs/protocol.md §3 is stale; expected:\n{block}"


def test_doc_has_no_unknown_examples() -> None:
    assert set(re.findall(r"<!-- crdt-example (\S+) -->", _section3())) == set(EXAMPLES)


def test_doc_examples_decode_with_the_strict_decoders() -> None:
    decoders = {"awset": AWSet, "ormap": ORMap, "gcounter": GCounter,
                "pncounter": PNCounter, "lww": LWWRegister, "context": CausalContext}
    for name in EXAMPLES:
        cls = decoders[name.split("-")[0]]
        raw = bytes.fromhex(render(name).split("\n\n")[-1].split("\n")[0])
        assert cls.from_cbor(loads(raw)).to_cbor() == EXAMPLES[name][1]()

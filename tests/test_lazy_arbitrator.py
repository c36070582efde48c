"""The lazily loaded arbitrator: files checked at once, the interpreter built on the first
MAYBE (which then decides as the eager arbitrator would), failing closed when it cannot."""

from __future__ import annotations

import logging
import random
import shutil
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
from support.ingress import T0, Peer, make_gateway

from vsm_edge.models import (
    FEATURE_NAMES,
    GatewayConfig,
    LazyArbitrator,
    ModelError,
    ModelUnavailableError,
    ReplayConfig,
    Verdict,
    load_arbitrator,
)

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "arbitrator.tflite"
# Every Bloom hit is a MAYBE: one bit, no exact set.
TINY = GatewayConfig(replay=ReplayConfig(capacity=1, fp_rate=0.5, exact_capacity=0))


def copy_model(tmp_path: Path) -> Path:
    target = tmp_path / "m.tflite"
    shutil.copy(MODEL, target)
    shutil.copy(MODEL.with_suffix(".json"), target.with_suffix(".json"))
    return target


def broken_runtime(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime that imports but cannot build an interpreter (tflite-runtime 2.14 + NumPy 2)."""

    class Interpreter:
        def __init__(self, **_: object) -> None:
            raise AttributeError("_ARRAY_API not found")

    package = types.ModuleType(name)
    module = types.ModuleType(f"{name}.interpreter")
    module.Interpreter = Interpreter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, name, package)
    monkeypatch.setitem(sys.modules, f"{name}.interpreter", module)


def test_checking_the_model_imports_neither_numpy_nor_a_runtime() -> None:
    code = (
        "import sys; from vsm_edge.models import LazyArbitrator, Gateway, BloomFilter; "
        "a = LazyArbitrator(); b = BloomFilter.for_capacity(1000, 0.01, bytes(32)); "
        "b.add(b'x'); assert b'x' in b; b.clear(); "
        "heavy = ('numpy', 'ai_edge_litert', 'tflite_runtime', 'tensorflow'); "
        "print(a.state, sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "not-loaded []"


def test_first_classify_loads_the_model_and_decides_as_the_eager_one() -> None:
    lazy = LazyArbitrator()
    assert (lazy.state, lazy.runtime, lazy.load_seconds) == ("not-loaded", None, None)
    eager = load_arbitrator()
    rng = random.Random(3)
    vectors = [[rng.uniform(-5, 50) for _ in FEATURE_NAMES] for _ in range(20)]
    assert [lazy.classify(v) for v in vectors] == [eager.classify(v) for v in vectors]
    assert lazy.state == "loaded"
    assert lazy.runtime == eager.runtime
    assert lazy.load_seconds is not None
    assert lazy.load_seconds > 0
    assert lazy.load() is lazy.load()  # built once


def test_a_broken_model_file_is_still_an_error_at_construction(tmp_path: Path) -> None:
    path = copy_model(tmp_path)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="SHA-256") as info:
        LazyArbitrator(path)
    assert info.value.reason == "corrupt"
    with pytest.raises(ModelError, match="cannot read"):
        LazyArbitrator(tmp_path / "absent.tflite")


def test_no_runtime_installed_is_an_error_at_construction() -> None:
    missing = (("vsm_edge_no_such_runtime.interpreter", "no-such-runtime"),)
    with pytest.raises(ModelError, match="no TFLite runtime installed") as info:
        LazyArbitrator(runtimes=missing)
    assert info.value.reason == "no-runtime"


def test_a_runtime_failing_on_the_first_maybe_fails_closed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken_runtime("vsm_edge_fake_tflite", monkeypatch)
    failures: list[ModelError] = []
    lazy = LazyArbitrator(
        runtimes=(("vsm_edge_fake_tflite.interpreter", "fake"),), on_unavailable=failures.append
    )
    assert lazy.state == "not-loaded"
    alice = Peer("alice", random.Random(1))
    gateway = make_gateway([alice], arbitrator=lazy, config=TINY)
    with caplog.at_level(logging.WARNING, logger="vsm_edge.models"):
        decisions = [gateway.decide(alice.message(T0 + i * 1000)) for i in range(6)]
    maybes = [d for d in decisions if d.maybe]
    assert maybes, "the tiny filter must produce MAYBE cases"
    assert all(d.verdict is Verdict.DENY for d in maybes)
    assert {(d.check, d.reason) for d in maybes} == {("arbitrator", "arbitrator-unavailable")}
    assert lazy.state == "unavailable"
    assert len(failures) == 1
    assert failures[0].reason == "runtime-failed"
    assert caplog.text.count("could not be loaded") == 1
    assert "_ARRAY_API" in caplog.text
    with pytest.raises(ModelUnavailableError):
        lazy.classify([0.0] * len(FEATURE_NAMES))


def test_a_replay_past_the_exact_set_loads_the_model_which_denies_it() -> None:
    # As tests/test_gateway.py's eager case, through the lazy arbitrator.
    alice = Peer("alice", random.Random(8))
    lazy = LazyArbitrator()
    gateway = make_gateway([alice], arbitrator=lazy, config=TINY)
    sent = list(alice.honest(T0, T0 + 60_000, rate=1.0))
    first_maybe = None
    for m in sent:
        d = gateway.decide(m)
        if d.maybe and first_maybe is None:
            first_maybe = d
    assert first_maybe is not None
    assert first_maybe.check == "arbitrator"
    assert first_maybe.reason.startswith("arbitrator-")
    assert first_maybe.score is not None
    assert lazy.state == "loaded"
    now = sent[-1].received_ms + 1_000
    replays = [replace(m, received_ms=now + i * 100) for i, m in enumerate(sent[-40:-10])]
    decisions = [gateway.decide(r) for r in replays]
    assert all(d.maybe and not d.allowed for d in decisions)
    assert decisions[0].reason == "arbitrator-replay"

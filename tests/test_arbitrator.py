"""The int8 arbitrator: the shipped model (always), integrity checks that fail closed,
runtime fallbacks, lazy loading, the wheel, and a retrain when TensorFlow is installed."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vsm_edge.models import (
    CLASSES,
    FEATURE_NAMES,
    Arbitrator,
    ModelError,
    load_arbitrator,
    load_arbitrator_or_none,
)
from vsm_edge.models.traffic_sim import make_dataset, score

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "arbitrator.tflite"
META = MODEL.with_suffix(".json")


@pytest.fixture(scope="module")
def shipped() -> Arbitrator:
    return load_arbitrator()


def test_shipped_model_loads_with_int8_tensors(shipped: Arbitrator) -> None:
    assert shipped.runtime in ("ai-edge-litert", "tflite-runtime")
    details = shipped.tensor_details()
    assert details["input"]["dtype"] == "int8"
    assert details["output"]["dtype"] == "int8"
    assert details["input"]["shape"] == [1, len(FEATURE_NAMES)]
    assert details["output"]["shape"] == [1, len(CLASSES)]
    assert MODEL.stat().st_size < 64 * 1024
    meta = json.loads(META.read_text())
    assert meta["features"] == list(FEATURE_NAMES)
    assert len(meta["held_out_seeds"]) >= 1


def test_shipped_model_separates_honest_from_floods_and_replays(shipped: Arbitrator) -> None:
    seeds = json.loads(META.read_text())["held_out_seeds"][:2]
    data = make_dataset(seeds)
    figures = score(data.y, shipped.predict(data.x), data.profiles)
    deny: dict[str, float] = figures["deny_rate"]  # type: ignore[assignment]
    assert figures["accuracy"] >= 0.9, figures  # type: ignore[operator]
    assert deny["honest"] <= 0.1, figures
    assert deny["replay"] >= 0.9, figures
    assert deny["flood"] >= 0.85, figures
    # One vector of each kind, through the gateway's own entry point.
    honest = data.x[data.y == CLASSES.index("honest")]
    replay = data.x[data.y == CLASSES.index("replay")]
    votes_h = [shipped.classify(v.tolist()).allow for v in honest[:200]]
    votes_r = [shipped.classify(v.tolist()).allow for v in replay[:200]]
    assert sum(votes_h) >= 0.9 * len(votes_h)
    assert sum(votes_r) <= 0.1 * len(votes_r)


def test_classify_explains_itself(shipped: Arbitrator) -> None:
    answer = shipped.classify([0.0] * len(FEATURE_NAMES))
    assert answer.label in CLASSES
    assert len(answer.probabilities) == len(CLASSES)
    assert sum(answer.probabilities) == pytest.approx(1.0, abs=0.05)
    assert answer.malicious == pytest.approx(1.0 - answer.probabilities[0])
    with pytest.raises(ModelError):
        shipped.classify([0.0] * 3)
    for bad in (float("nan"), float("inf"), -float("inf"), 1e308, 2e6):
        vector = [0.0] * len(FEATURE_NAMES)
        vector[7] = bad
        with pytest.raises(ModelError, match="finite"):
            shipped.classify(vector)
    with pytest.raises(ModelError):
        shipped.classify(["x"] * len(FEATURE_NAMES))  # type: ignore[list-item]


def test_quantization_matches_the_tensor_parameters(shipped: Arbitrator) -> None:
    scale, zero = shipped.tensor_details()["input"]["quantization"]  # type: ignore[misc]
    meta = json.loads(META.read_text())
    x = np.array(meta["mean"]) + np.array(meta["std"]) * 1.5  # 1.5 standard deviations
    q = shipped.quantize(x.tolist())
    assert q.dtype == np.int8
    expected = np.clip(np.rint(1.5 / scale + zero), -128, 127)
    assert np.all(np.abs(q[0].astype(int) - expected) <= 1)


# -- fail closed: corrupt or foreign files ---------------------------------------


def copy_model(tmp_path: Path) -> Path:
    target = tmp_path / "m.tflite"
    shutil.copy(MODEL, target)
    shutil.copy(META, target.with_suffix(".json"))
    return target


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset", [5, 100, -20])
def test_corrupt_model_file_is_a_clear_error(tmp_path: Path, offset: int) -> None:
    path = copy_model(tmp_path)
    flip(path, offset)
    with pytest.raises(ModelError, match="SHA-256") as info:
        load_arbitrator(path)
    assert info.value.reason == "corrupt"


def test_truncated_empty_missing_and_oversized_models(tmp_path: Path) -> None:
    path = copy_model(tmp_path)
    path.write_bytes(MODEL.read_bytes()[:100])
    with pytest.raises(ModelError, match="SHA-256"):
        load_arbitrator(path)
    path.write_bytes(b"")
    with pytest.raises(ModelError):
        load_arbitrator(path)
    with pytest.raises(ModelError, match="cannot read"):
        load_arbitrator(tmp_path / "absent.tflite")
    path.write_bytes(bytes(2 << 20))
    with pytest.raises(ModelError, match="larger than"):
        load_arbitrator(path)


def test_metadata_must_match(tmp_path: Path) -> None:
    path = copy_model(tmp_path)
    meta_path = path.with_suffix(".json")
    good: dict[str, Any] = json.loads(meta_path.read_text())
    cases: list[tuple[object, str]] = [
        ("not json {", "not JSON"),
        ([1, 2], "not a JSON object"),
        ({**good, "features": good["features"][::-1]}, "other features"),
        ({**good, "classes": ["a", "b", "c", "d"]}, "other classes"),
        ({**good, "format": 2}, "format"),
        ({**good, "std": [0.0] * len(FEATURE_NAMES)}, "standardisation"),
        ({**good, "allow_threshold": 1.5}, "threshold"),
    ]
    for meta, why in cases:
        meta_path.write_text(meta if isinstance(meta, str) else json.dumps(meta))
        with pytest.raises(ModelError, match=why):
            load_arbitrator(path)
    meta_path.unlink()
    with pytest.raises(ModelError, match="cannot read"):
        load_arbitrator(path)


def test_garbage_with_a_matching_digest_never_reaches_the_interpreter(tmp_path: Path) -> None:
    import hashlib

    meta = json.loads(META.read_text())
    for garbage in (
        b"\x00" * 64,
        b"TFL3" * 16,
        MODEL.read_bytes()[:4] + b"XXXX" + MODEL.read_bytes()[8:],
    ):
        meta["sha256"] = hashlib.sha256(garbage).hexdigest()
        with pytest.raises(ModelError) as info:
            Arbitrator(garbage, meta)
        assert info.value.reason in ("corrupt", "runtime-failed")


def test_unloadable_model_fails_closed_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = copy_model(tmp_path)
    flip(path, 100)
    with caplog.at_level(logging.WARNING, logger="vsm_edge.models"):
        assert load_arbitrator_or_none(path) is None
    assert "MAYBE decisions will DENY" in caplog.text


# -- runtimes -------------------------------------------------------------------


def test_no_runtime_installed_is_a_clear_error(caplog: pytest.LogCaptureFixture) -> None:
    missing = (("vsm_edge_no_such_runtime.interpreter", "no-such-runtime"),)
    with pytest.raises(ModelError, match="no TFLite runtime installed") as info:
        load_arbitrator(runtimes=missing)
    assert info.value.reason == "no-runtime"
    with caplog.at_level(logging.WARNING, logger="vsm_edge.models"):
        assert load_arbitrator_or_none(runtimes=missing) is None
    assert "no-runtime" in caplog.text


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


def test_broken_runtime_is_skipped_for_the_next_one(monkeypatch: pytest.MonkeyPatch) -> None:
    broken_runtime("vsm_edge_fake_tflite", monkeypatch)
    runtimes = (
        ("vsm_edge_fake_tflite.interpreter", "fake"),
        ("ai_edge_litert.interpreter", "ai-edge-litert"),
    )
    assert load_arbitrator(runtimes=runtimes).runtime == "ai-edge-litert"
    with pytest.raises(ModelError, match="_ARRAY_API") as info:
        load_arbitrator(runtimes=runtimes[:1])
    assert info.value.reason == "runtime-failed"


def test_importing_the_package_does_not_load_a_tflite_runtime() -> None:
    code = (
        "import sys, vsm_edge.models, vsm_edge.models.traffic_sim; "
        "heavy = ('ai_edge_litert', 'tflite_runtime', 'tensorflow'); "
        "print(any(m.split('.')[0] in heavy for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


# -- packaging and training -------------------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_built_wheel_ships_the_model_and_its_card(tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path / "out"),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=280,
    )
    (wheel,) = (tmp_path / "out").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert z.read("vsm_edge/models/arbitrator.tflite") == MODEL.read_bytes()
        assert z.read("vsm_edge/models/arbitrator.json") == META.read_bytes()
        assert "vsm_edge/models/MODEL_CARD.md" in z.namelist()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_retrain_on_a_tiny_budget(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip(
            "TensorFlow is not installed (the optional [train] extra): retraining not tested"
        )
    out = tmp_path / "tiny.tflite"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "vsm_edge.models.train_arbitrator",
            "--seed",
            "3",
            "--train-episodes",
            "3",
            "--val-episodes",
            "1",
            "--test-episodes",
            "1",
            "--epochs",
            "2",
            "--duration",
            "40",
            "--out",
            str(out),
            "--card",
            str(tmp_path / "card.md"),
        ],
        capture_output=True,
        text=True,
        timeout=580,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout)
    assert figures["int8"]["samples"] > 0
    model = load_arbitrator(out)
    assert model.tensor_details()["input"]["dtype"] == "int8"
    card = (tmp_path / "card.md").read_text()
    assert "python -m vsm_edge.models.train_arbitrator --seed 3" in card
    assert json.loads(out.with_suffix(".json").read_text())["seed"] == 3

"""Train the arbitrator on simulated traffic and quantize it to full-int8 TFLite.

Needs the ``[train]`` extra (TensorFlow)::

    python -m vsm_edge.models.train_arbitrator --seed 7 --out models/arbitrator.tflite \\
        --card models/MODEL_CARD.md

Steps: episodes from :mod:`vsm_edge.models.traffic_sim` (train, validation
and held-out test episodes get disjoint seeds spawned from ``--seed``);
features standardised with the training set's mean and std; a Keras MLP
16 -> 32 -> 16 -> 4 trained with class weights and early stopping on the
validation loss; TensorFlow's converter with a representative dataset makes
it full-int8 (int8 input and output); the ``.tflite`` file and its JSON
sidecar are written; the *quantized* model is evaluated on the held-out
episodes through the same :class:`Arbitrator` the gateway uses, and the
figures go to stdout (JSON) and, with ``--card``, into the model card.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._arbitrator import CLASSES, Arbitrator, model_metadata, standardize
from ._zombie import FEATURE_NAMES, NUM_FEATURES
from .traffic_sim import Dataset, make_dataset, score

DEFAULT_SEED = 7
STD_FLOOR = 0.05


def episode_seeds(
    seed: int, train: int, val: int, test: int
) -> tuple[list[int], list[int], list[int]]:
    """Disjoint episode seeds for the three splits, spawned from ``seed``."""
    children = np.random.SeedSequence(seed).spawn(3)
    out = []
    for child, count in zip(children, (train, val, test), strict=True):
        state = child.generate_state(max(count, 1), dtype=np.uint32)
        out.append([int(v) for v in state[:count]])
    return out[0], out[1], out[2]


def _keras_model(seed: int) -> Any:
    import tensorflow as tf  # the optional [train] extra, imported only here

    keras = tf.keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((NUM_FEATURES,), name="features"),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(len(CLASSES), activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train(
    *,
    seed: int = DEFAULT_SEED,
    train_episodes: int = 160,
    val_episodes: int = 20,
    test_episodes: int = 40,
    epochs: int = 60,
    duration_s: float = 120.0,
    log: Any = sys.stderr,
) -> dict[str, Any]:
    """Train, quantize and evaluate; returns the model bytes, metadata and figures."""
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    started = time.perf_counter()
    train_seeds, val_seeds, test_seeds = episode_seeds(
        seed, train_episodes, val_episodes, test_episodes
    )
    print(f"simulating {len(train_seeds)}+{len(val_seeds)}+{len(test_seeds)} episodes", file=log)
    data_train = make_dataset(train_seeds, duration_s=duration_s)
    data_val = make_dataset(val_seeds, duration_s=duration_s)
    data_test = make_dataset(test_seeds, duration_s=duration_s)
    mean = data_train.x.mean(axis=0)
    std = np.maximum(data_train.x.std(axis=0), STD_FLOOR)
    x_train = standardize(data_train.x, mean, std)
    x_val = standardize(data_val.x, mean, std)
    counts = np.bincount(data_train.y, minlength=len(CLASSES)).astype(np.float64)
    present = counts > 0
    weights = {
        i: float(counts[present].sum() / (present.sum() * counts[i])) if counts[i] else 0.0
        for i in range(len(CLASSES))
    }
    print(
        f"training on {len(x_train)} vectors, class counts {counts.astype(int).tolist()}", file=log
    )

    keras = tf.keras
    model = _keras_model(seed)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=8, restore_best_weights=True)
    history = model.fit(
        x_train,
        data_train.y,
        validation_data=(x_val, data_val.y) if len(x_val) else None,
        epochs=epochs,
        batch_size=256,
        class_weight=weights,
        callbacks=[stop] if len(x_val) else [],
        verbose=0,
        shuffle=True,
    )
    epochs_run = len(history.history["loss"])

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(x_train), size=min(1_000, len(x_train)), replace=False)
    representative = x_train[pick]

    def dataset() -> Iterator[list[np.ndarray]]:
        for row in representative:
            yield [row.reshape(1, NUM_FEATURES)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    model_bytes = bytes(converter.convert())

    float_test = model.predict(standardize(data_test.x, mean, std), verbose=0, batch_size=4096)
    extra = {
        "seed": seed,
        "episodes": {"train": train_episodes, "validation": val_episodes, "test": test_episodes},
        "duration_s": duration_s,
        "held_out_seeds": test_seeds,
        "tensorflow": tf.__version__,
    }
    meta = model_metadata(model_bytes, mean=mean.tolist(), std=std.tolist(), extra=extra)
    arbitrator = Arbitrator(model_bytes, meta)
    int8_test = arbitrator.predict(data_test.x)
    figures = {
        "int8": score(data_test.y, int8_test, data_test.profiles),
        "float": score(data_test.y, float_test, data_test.profiles),
        "train_vectors": len(x_train),
        "validation_vectors": len(x_val),
        "epochs_run": epochs_run,
        "model_bytes": len(model_bytes),
        "parameters": int(model.count_params()),
        "seconds": round(time.perf_counter() - started, 1),
        "runtime": arbitrator.runtime,
    }
    return {"model": model_bytes, "metadata": meta, "figures": figures, "test": data_test}


def _fmt(v: float) -> str:
    return "n/a" if v != v else f"{v:.3f}"  # NaN check without math


def model_card(meta: dict[str, Any], figures: dict[str, Any], command: str, test: Dataset) -> str:
    """The model card, every number from this run."""
    q = figures["int8"]
    f = figures["float"]
    rows = "\n".join(
        f"| {name} | {q['support'][name]} | {_fmt(q['precision'][name])} "
        f"| {_fmt(q['recall'][name])} | {_fmt(q['deny_rate'][name])} | {_fmt(f['recall'][name])} |"
        for name in CLASSES
    )
    confusion = "\n".join(
        f"| {CLASSES[i]} | " + " | ".join(str(v) for v in row) + " |"
        for i, row in enumerate(q["confusion"])
    )
    features = "\n".join(
        f"| {i} | `{name}` | {meta['mean'][i]:.4f} | {meta['std'][i]:.4f} |"
        for i, name in enumerate(FEATURE_NAMES)
    )
    profiles = sorted(set(test.profiles))
    return f"""# Model card: the ingress arbitrator

*Generated by `models/train_arbitrator.py`; every figure below was measured in
the run that produced the shipped `arbitrator.tflite` (SHA-256
`{meta["sha256"]}`).*

## What it is for

The gateway (`vsm_edge.models.Gateway`) asks the arbitrator only about MAYBE
envelopes: signed, in the zone, in time, but the replay check can prove
neither that they are new nor that they are replays (a Bloom-filter hit older
than the exact recent set). It answers with class probabilities; the envelope
is allowed when P(honest) >= {meta["allow_threshold"]}. Everything else the
gateway decides without it.

## Model

- MLP {NUM_FEATURES} -> 32 -> 16 -> {len(CLASSES)} (ReLU, softmax),
  {figures["parameters"]} parameters, trained in Keras (TensorFlow {meta["tensorflow"]}),
  Adam 3e-3, batch 256, class-balanced weights, early stopping on validation loss
  ({figures["epochs_run"]} epochs run).
- Full-int8 TFLite from TensorFlow's converter (representative dataset of
  1,000 training vectors; int8 input and output tensors), {figures["model_bytes"]} bytes.
- Inputs standardised per feature with the training mean and std (std floor
  {STD_FLOOR}), clipped to [-4, 4], then quantized; the mean/std travel in
  `arbitrator.json` and are checked with the model's SHA-256 at load time.
- Classes: {", ".join(f"`{c}`" for c in CLASSES)}.

## Data

Synthetic only: `vsm_edge.models.traffic_sim` (seeded). Each episode is one
receiving node's view of {meta["duration_s"]:.0f} s of a mesh with 4-10 honest peers
(Poisson-like rates 0.1-4 msg/s with gamma jitter, bursts of 5-40 messages,
reconnect stalls, QoS 1 redeliveries), 1-3 honest peers with clocks 5-55 s
off, 1-2 replay attackers (re-publishing a victim's captured envelopes
0.5-55 s later at 1-50 msg/s), 0-2 floods (a compromised peer going from
honest to 20-500 msg/s), 0-2 slow-drip zombies (0.3-3 msg/s on a regular
timer, one kind, a few forged or out-of-zone attempts). Events run through a
real `Gateway` and the feature vectors are the ones it computes; at most 400
vectors per (peer, class) per episode.

- Episodes: {meta["episodes"]["train"]} train, {meta["episodes"]["validation"]} validation,
  {meta["episodes"]["test"]} held-out test, with disjoint seeds spawned from seed
  **{meta["seed"]}** (`numpy.random.SeedSequence`); held-out seeds are listed in
  `arbitrator.json`.
- Vectors: {figures["train_vectors"]} train, {figures["validation_vectors"]} validation,
  {q["samples"]} held-out (profiles: {", ".join(profiles)}).

## Features

| # | name | train mean | train std |
|---|------|-----------:|----------:|
{features}

(definitions: `vsm_edge.models._zombie.FEATURE_NAMES` and `docs/security.md`)

## Held-out results (the int8 model, through the run-time `Arbitrator`)

Overall accuracy **{_fmt(q["accuracy"])}** (the float Keras model: {_fmt(f["accuracy"])}).
Honest peers with skewed clocks allowed: **{_fmt(q["allow_rate_honest_skewed"])}**.

| class | support | precision | recall | denied by the gateway | recall (float model) |
|-------|--------:|----------:|-------:|----------------------:|---------------------:|
{rows}

Confusion matrix (rows: true class, columns: predicted {", ".join(CLASSES)}):

| true | {" | ".join(CLASSES)} |
|------|{"---:|" * len(CLASSES)}
{confusion}

## Reproduce

```sh
{command}
```

Training took {figures["seconds"]} s on this machine ({platform.machine()}, 2 cores). The
simulation is deterministic for a seed; TensorFlow is run single-threaded with
op determinism on, but bit-identical weights across TensorFlow versions or CPUs
are not promised, so a retrained model's figures may differ slightly.

## Limits

- Trained on a simulator, not on captured traffic: the classes are the
  simulator's definitions of honest and hostile. A real mesh with other
  rhythms (much faster honest peers, other message kinds) needs its own
  baseline, or a retrain with its parameters.
- Vectors are scored as if every message were a MAYBE; in deployment only
  unresolved Bloom hits reach the model.
- An adaptive attacker who knows the features can shape traffic to look
  honest (a slow, jittered, mixed-kind drip); the arbitrator raises the cost,
  it does not prove intent. See `docs/security.md`.
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--train-episodes", type=int, default=160)
    parser.add_argument("--val-episodes", type=int, default=20)
    parser.add_argument("--test-episodes", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds per episode")
    parser.add_argument("--out", type=Path, required=True, help="the .tflite file to write")
    parser.add_argument("--card", type=Path, help="write the model card here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # TensorFlow's converter prints to stdout; keep stdout for the figures.
    with contextlib.redirect_stdout(sys.stderr):
        result = train(
            seed=args.seed,
            train_episodes=args.train_episodes,
            val_episodes=args.val_episodes,
            test_episodes=args.test_episodes,
            epochs=args.epochs,
            duration_s=args.duration,
        )
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(result["model"])
    out.with_suffix(".json").write_text(json.dumps(result["metadata"], indent=1) + "\n")
    command = "python -m vsm_edge.models.train_arbitrator " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if args.card:
        args.card.write_text(
            model_card(result["metadata"], result["figures"], command, result["test"])
        )
    print(json.dumps(result["figures"], indent=1))
    print(
        f"wrote {out} ({len(result['model'])} bytes, sha256 "
        f"{hashlib.sha256(result['model']).hexdigest()[:16]}...)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Wire codec benchmark: COSE sign+verify against raw PyNaCl, decodes/s, CBOR costs.

    .venv/bin/python bench/bench_wire.py [--seconds S]

Prints what it measured on this machine (nothing is asserted). The ratio
rows compare one COSE round trip with raw PyNaCl signing and verifying the
same 200 payload bytes, in the same run:

    raw (nacl.signing)   SigningKey.sign(payload) + VerifyKey.verify(signed)
    raw (bindings)       crypto_sign + crypto_sign_open: libsodium, no wrapper
    COSE plain           sign_envelope + decode_envelope + Envelope.verify
    COSE encrypted       sign_envelope(mesh_key=...) + open_envelope(mesh_key=...)
                         (encrypt, sign, decode, verify, decrypt)
    raw + AEAD           the same crypto with no COSE: ChaCha20-Poly1305 encrypt,
                         sign, verify, decrypt (bindings) — the like-for-like
                         baseline for the encrypted case

The four cases run in turn in ~5 ms batches until the time is up, so each
cycle's batches see the same machine; a ratio is the median over cycles of
(COSE time / raw time) in CPU time of this process (time.process_time, which
leaves out time the process was not running: the machine is shared), with
the 10th..90th percentiles and the wall-clock median beside it. The nonce and
IV are fixed bytes on both sides: drawing them (os.urandom) is the caller's
cost, about 1 us, not the codec's. Runs about 16 x --seconds (default 3 s).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import cbor2
import nacl
import nacl.bindings
import nacl.signing

from vsm_edge.sync import (
    MeshKey,
    NodeKey,
    Timestamp,
    _cbor,
    decode_envelope,
    open_envelope,
    sign_envelope,
)

PAYLOAD = bytes((i * 37 + 11) % 256 for i in range(200))
KEY = NodeKey(bytes(range(32)))
MESH = MeshKey(bytes(range(32, 64)))
NONCE = bytes(range(16))
IV = bytes(range(12))
HLC = Timestamp(1_700_000_000_000, 5)


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Operations per CPU-second of ``fn`` over about ``seconds`` of wall time."""
    n = _batch(fn)
    done = 0
    spent = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.process_time()
        for _ in range(n):
            fn()
        spent += time.process_time() - t0
        done += n
    return done / spent


def _batch(fn: Callable[[], object], target: float = 0.005) -> int:
    """How many calls of ``fn`` take about ``target`` seconds."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - t0
        if took >= target:
            return max(1, round(n * target / took))
        n *= 2


def paired(
    cases: dict[str, Callable[[], object]], seconds: float
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run the cases in turn, in short batches, until ``seconds`` have passed.

    Returns per-cycle seconds per operation for each case, in CPU time
    (process_time: excludes time this process was not running) and in wall
    time. Adjacent batches see the same machine, so ratios are taken per cycle.
    """
    batches = {name: _batch(fn) for name, fn in cases.items()}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    wall: dict[str, list[float]] = {name: [] for name in cases}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for name, fn in cases.items():
            n = batches[name]
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                fn()
            cpu[name].append((time.process_time() - c0) / n)
            wall[name].append((time.perf_counter() - w0) / n)
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per group of cases")
    args = parser.parse_args()
    budget = args.seconds
    started = time.perf_counter()

    signing = nacl.signing.SigningKey(KEY.seed)
    verifying = signing.verify_key
    secret, public = KEY.secret_key, KEY.public_key
    key = MESH.key

    def raw_hl() -> None:
        verifying.verify(signing.sign(PAYLOAD))

    def raw_ll() -> None:
        nacl.bindings.crypto_sign_open(nacl.bindings.crypto_sign(PAYLOAD, secret), public)

    aad = bytes(90)  # about the size of the Enc_structure

    def raw_aead() -> None:
        sealed = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(PAYLOAD, aad, IV, key)
        signed = nacl.bindings.crypto_sign(sealed, secret)
        opened = nacl.bindings.crypto_sign_open(signed, public)
        nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(opened, aad, IV, key)

    def cose_plain() -> None:
        data = sign_envelope(PAYLOAD, KEY, hlc=HLC, kind="delta", nonce=NONCE)
        decode_envelope(data).verify(public)

    def cose_encrypted() -> None:
        data = sign_envelope(PAYLOAD, KEY, hlc=HLC, kind="delta", nonce=NONCE, mesh_key=MESH, iv=IV)
        open_envelope(data, public, mesh_key=MESH)

    # Sanity: each case does what it says.
    assert verifying.verify(signing.sign(PAYLOAD)) == PAYLOAD
    data = sign_envelope(PAYLOAD, KEY, hlc=HLC, kind="delta", nonce=NONCE, mesh_key=MESH, iv=IV)
    assert open_envelope(data, public, mesh_key=MESH)[1] == PAYLOAD

    print(f"# bench_wire  python {platform.python_version()}  PyNaCl {nacl.__version__}  "
          f"cbor2 {_version('cbor2')}  cpus {os.cpu_count()}  {platform.machine()}")  # fmt: skip
    plain_size = len(sign_envelope(PAYLOAD, KEY, hlc=HLC, kind="delta", nonce=NONCE))
    print(f"# payload {len(PAYLOAD)} B; envelope {plain_size} B plain, {len(data)} B encrypted")
    print(f"# load average at start {os.getloadavg()[0]:.2f} (1 min)")

    cases = {"raw (nacl.signing)": raw_hl, "raw (bindings)": raw_ll,
             "COSE plain": cose_plain, "COSE encrypted": cose_encrypted,
             "raw + AEAD (bindings)": raw_aead, "raw (bindings), again": raw_ll}  # fmt: skip
    cpu, wall = paired(cases, budget * 6)
    cycles = len(cpu["COSE plain"])
    print(f"\n## sign+verify round trips on 200-byte payloads ({cycles} interleaved cycles)")
    print(f"{'case':<23}{'ops/CPU-s':>10}{'CPU µs/op':>11}{'min CPU µs':>12}{'wall µs/op':>12}")
    for name in cases:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"{name:<23}{1 / c:>10,.0f}{c * 1e6:>11.1f}{min(cpu[name]) * 1e6:>12.1f}"
              f"{w * 1e6:>12.1f}")  # fmt: skip

    print("\n## ratio COSE time / raw time (target <= 1.2)")
    print("# paired: median over cycles of the ratio of adjacent batches (CPU time), with")
    print("# p10..p90; min/min: ratio of each case's fastest batch (least contended);")
    print("# the last row is an A/A control: the same raw case twice (ideal 1.000)")
    print(f"{'':<44}{'paired':>8}{'p10..p90':>15}{'min/min':>9}{'wall':>7}")
    pairs = [(cose, raw) for cose in ("COSE plain", "COSE encrypted")
             for raw in ("raw (nacl.signing)", "raw (bindings)")]  # fmt: skip
    pairs.append(("COSE encrypted", "raw + AEAD (bindings)"))
    pairs.append(("raw (bindings), again", "raw (bindings)"))
    for top, bottom in pairs:
        rc = sorted(x / y for x, y in zip(cpu[top], cpu[bottom], strict=True))
        rw = [x / y for x, y in zip(wall[top], wall[bottom], strict=True)]
        p10, p90 = rc[len(rc) // 10], rc[(len(rc) * 9) // 10]
        label = f"{top} / {bottom}"
        print(f"{label:<44}{statistics.median(rc):>8.3f}{f'{p10:.3f}..{p90:.3f}':>15}"
              f"{min(cpu[top]) / min(cpu[bottom]):>9.3f}{statistics.median(rw):>7.3f}")  # fmt: skip

    # ---- decoding and its parts
    plain = sign_envelope(PAYLOAD, KEY, hlc=HLC, kind="delta", nonce=NONCE)
    encrypted = data
    # The same header in another key order (as pycose writes it): the generic path.
    protected = decode_envelope(plain).protected
    header = cbor2.loads(protected)
    reordered = cbor2.dumps(dict(reversed(list(header.items()))))
    sig = nacl.bindings.crypto_sign(_cbor.dumps(["Signature1", reordered, b"", PAYLOAD]), secret)[
        :64
    ]
    generic = _cbor.dumps(_cbor.CBORTag(18, [reordered, {}, PAYLOAD, sig]))
    assert decode_envelope(generic).hlc == HLC.packed
    env_plain = decode_envelope(plain)
    env_enc = decode_envelope(encrypted)

    parts = {
        "decode_envelope plain (fast path)": lambda: decode_envelope(plain),
        "decode_envelope encrypted (fast path)": lambda: decode_envelope(encrypted),
        "decode_envelope generic path": lambda: decode_envelope(generic),
        "Envelope.verify": lambda: env_plain.verify(public),
        "Envelope.plaintext (decrypt)": lambda: env_enc.plaintext(MESH),
        "sign_envelope plain": lambda: sign_envelope(
            PAYLOAD, KEY, hlc=HLC, kind="delta", nonce=NONCE
        ),
        "sign_envelope encrypted": lambda: sign_envelope(
            PAYLOAD, KEY, hlc=HLC, kind="delta", nonce=NONCE, mesh_key=MESH, iv=IV
        ),
        "raw crypto_sign": lambda: nacl.bindings.crypto_sign(PAYLOAD, secret),
        "raw AEAD encrypt (PyNaCl binding)": lambda: (
            nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(PAYLOAD, aad, IV, key)
        ),
    }
    print("\n## parts (CPU time)")
    print(f"{'operation':<40}{'ops/CPU-s':>11}{'µs/op':>9}")
    each = budget * 3 / len(parts)
    for name, fn in parts.items():
        r = rate(fn, each)
        print(f"{name:<40}{r:>11,.0f}{1e6 / r:>9.1f}")

    # ---- the CBOR door on a large payload: the scan's cost next to cbor2's C decoder
    big = {f"key-{i:05d}": [i, i * 0.5, "node-a", b"\x00" * 8] for i in range(5000)}
    encoded = _cbor.dumps(big)
    items = 1 + len(big) * 6
    cbor_cases = {
        "cbor2.loads (C, no checks)": lambda: cbor2.loads(encoded),
        "_cbor scan only (_cbor.check)": lambda: _cbor.check(encoded),
        "_cbor.loads (scan + cbor2)": lambda: _cbor.loads(encoded),
        "cbor2.dumps canonical=True": lambda: cbor2.dumps(big, canonical=True),
        "_cbor.dumps (§4.2.1)": lambda: _cbor.dumps(big),
    }
    print(f"\n## CBOR: a {len(big):,}-key map, {len(encoded):,} B, {items:,} items")
    print(f"{'operation (CPU time)':<34}{'ms/op':>9}{'MB/s':>8}{'µs/item':>9}")
    each = budget * 3 / len(cbor_cases)
    for name, fn in cbor_cases.items():
        r = rate(fn, each)
        print(f"{name:<34}{1e3 / r:>9.2f}{r * len(encoded) / 1e6:>8.1f}{1e6 / r / items:>9.3f}")
    print(f"\n# load average at end {os.getloadavg()[0]:.2f}; "
          f"total {time.perf_counter() - started:.1f} s")  # fmt: skip


def _version(module: str) -> str:
    from importlib.metadata import version

    return version(module)


if __name__ == "__main__":
    main()

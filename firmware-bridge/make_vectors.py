"""Regenerate firmware-bridge/vectors.json (run from the repository root:
``python firmware-bridge/make_vectors.py``). The tests check the file against both
codecs, so a change here that either codec disagrees with fails the suite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vsm_edge.bridge import (
    Ack,
    Channel,
    Command,
    Error,
    Heartbeat,
    Hello,
    HelloAck,
    Message,
    Nack,
    NackReason,
    Reading,
    encode_frame,
    encode_payload,
    message_to_json,
)
from vsm_edge.bridge._framing import crc16, frame_payload

OUT = Path(__file__).with_name("vectors.json")

VALID: list[tuple[str, Message]] = [
    ("hello: minimal, no channels", Hello(0, (1,), "d1", "0.1", 256)),
    (
        "hello: two sensors and one actuator with units and ranges",
        Hello(
            0,
            (1,),
            "greenhouse-7",
            "2.4.1",
            256,
            (
                Channel(1, "temp", "°C", -40, 125.0),
                Channel(2, "humidity", "%RH", 0, 100),
            ),
            (Channel(10, "fan", "%", 0, 100),),
        ),
    ),
    (
        "hello: offers versions 1 and 2, small max_frame, channel without range",
        Hello(41, (1, 2), "mcu.a_b-c", "v3", 64, (Channel(0, "count", ""),), ()),
    ),
    ("hello_ack", HelloAck(0, 1, 256, 1000)),
    ("reading: small int, no time", Reading(1, 1, 21)),
    ("reading: negative int with time", Reading(2, 1, -17, 123456)),
    ("reading: half float", Reading(3, 1, 21.5, 1000)),
    ("reading: single float", Reading(4, 2, 3.140000104904175, 1001)),
    ("reading: double float", Reading(5, 2, 0.1, 1002)),
    ("reading: negative zero", Reading(6, 2, -0.0)),
    ("reading: smallest half subnormal", Reading(7, 2, 5.960464477539063e-08)),
    # Halves with exponent 15 (32768 <= |v| <= 65504): cbor2 5.9's C encoder wrote them
    # as float32; deterministic CBOR (and the C codec) writes two bytes.
    ("reading: largest half 65504.0", Reading(11, 2, 65504.0)),
    ("reading: single next to a half (60000.01171875 is no half)", Reading(12, 2, 60000.01171875)),
    (
        "hello: channel range at the top of half precision (-32768.0 .. 60000.0)",
        Hello(42, (1,), "baro-1", "1.0", 256, (Channel(3, "p", "Pa", -32768.0, 60000.0),), ()),
    ),
    ("reading: largest int64", Reading(8, 3, 2**63 - 1)),
    ("reading: smallest int64", Reading(9, 3, -(2**63))),
    ("reading: time_ms at 2^32-1", Reading(10, 3, 0, 2**32 - 1)),
    ("reading: seq 65535 (wraps to 0 next)", Reading(65535, 1, 1)),
    ("command: int", Command(0, 10, 75)),
    ("command: float", Command(1, 10, 0.5)),
    ("ack", Ack(12, 1)),
    ("nack: damaged frame (crc), no ref", Nack(13, NackReason.CRC)),
    (
        "nack: out of range, with ref and detail",
        Nack(14, NackReason.OUT_OF_RANGE, 1, "fan takes 0..100"),
    ),
    ("nack: no session", Nack(0, NackReason.NO_SESSION, 3)),
    ("heartbeat: no time", Heartbeat(300)),
    ("heartbeat: uptime", Heartbeat(301, 60000)),
    ("error: code only", Error(302, 1)),
    ("error: code, channel and detail", Error(303, 2, 1, "sensor not responding")),
]


def _raw(payload: bytes) -> bytes:
    return frame_payload(payload, 4096)


def _invalid() -> list[tuple[str, bytes, str]]:
    good = encode_frame(Reading(7, 1, 21.5, 1234))
    body = bytearray(good[:-1])
    flipped = bytes(body[:-2]) + bytes([body[-2] ^ 0x01]) + bytes(body[-1:]) + b"\x00"
    return [
        ("damaged: one bit flipped in the CRC", flipped, "crc"),
        (
            "damaged: one bit flipped in the payload",
            bytes(body[:5]) + bytes([body[5] ^ 0x40]) + bytes(body[6:]) + b"\x00",
            "crc",
        ),
        ("damaged: COBS block runs past the end", bytes([0x09, 0x01, 0x02, 0x00]), "cobs"),
        ("damaged: too short for a CRC", bytes([0x02, 0x01, 0x00]), "short"),
        ("damaged: 257 bytes without delimiter", b"\x01" * 257 + b"\x00", "long"),
        ("invalid: CBOR tag", _raw(bytes.fromhex("c1a2000601190100")), "message"),
        ("invalid: unknown message type 9", _raw(bytes.fromhex("a200090100")), "message"),
        ("invalid: keys out of order", _raw(bytes.fromhex("a2010000060000")[:5]), "message"),
        ("invalid: missing ref in ack", _raw(bytes.fromhex("a200040101")), "message"),
        (
            "invalid: channel 256",
            _raw(bytes.fromhex("a40002010109190100 0a01".replace(" ", ""))),
            "message",
        ),
        ("invalid: indefinite-length map", _raw(bytes.fromhex("bf00060101ff")), "message"),
        ("invalid: trailing byte", _raw(bytes.fromhex("a20006010100")), "message"),
        ("invalid: NaN value", _raw(bytes.fromhex("a40002010109010af97e00")), "message"),
        ("invalid: bool value", _raw(bytes.fromhex("a40002010109010af5")), "message"),
        (
            "invalid: error detail not UTF-8",
            _raw(bytes.fromhex("a400070101 0e62c328 0f01".replace(" ", ""))),
            "message",
        ),
        ("invalid: not a map", _raw(bytes.fromhex("820006")), "message"),
    ]


def build() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for description, msg in VALID:
        frame = encode_frame(msg)
        raw = encode_payload(msg)
        out.append(
            {
                "description": description,
                "frame": frame.hex(),
                "message": message_to_json(msg),
                "payload": raw.hex(),
                "crc": f"{crc16(raw):04x}",
            }
        )
    for description, frame, error in _invalid():
        out.append(
            {"description": description, "frame": frame.hex(), "message": None, "error": error}
        )
    return out


def main() -> None:
    OUT.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

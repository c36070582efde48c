"""The bridge's framing, CBOR subset and messages: vectors, limits, fuzz."""

from __future__ import annotations

import contextlib
import math
import struct

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.bridge import VECTORS, messages, same_json

from vsm_edge.bridge import (
    CRC_CHECK,
    NEED_DATA,
    BridgeError,
    Command,
    Connection,
    FrameError,
    FrameRejected,
    Hello,
    MessageError,
    Reading,
    Role,
    _cbor,
    cobs_decode,
    cobs_encode,
    crc16,
    decode_frame,
    decode_payload,
    encode_frame,
    encode_payload,
    max_payload,
    message_from_json,
    message_to_json,
)
from vsm_edge.bridge._framing import FrameSplitter, frame_payload

VALID = [v for v in VECTORS if v["message"] is not None]
INVALID = [v for v in VECTORS if v["message"] is None]


def test_crc_is_ibm_3740_with_its_check_value() -> None:
    assert crc16(b"123456789") == CRC_CHECK == 0x29B1
    assert crc16(b"") == 0xFFFF
    # leading zeros change it (they would not with an all-zero initial value)
    assert crc16(b"\x00" + b"123456789") != CRC_CHECK


@pytest.mark.parametrize(
    ("data", "encoded"),
    [
        (b"", "01"),
        (b"\x00", "0101"),
        (b"\x00\x00", "010101"),
        (b"\x11\x22\x00\x33", "03112202 33".replace(" ", "")),
        (b"\x11\x00\x00\x00", "0211010101"),
        (bytes(range(1, 255)), "ff" + bytes(range(1, 255)).hex()),
        (bytes(range(0, 255)), "01ff" + bytes(range(1, 255)).hex()),
        (bytes(range(1, 256)), "ff" + bytes(range(1, 255)).hex() + "02ff"),
        (bytes(range(2, 256)) + b"\x00", "ff" + bytes(range(2, 256)).hex() + "0101"),
        (bytes(range(3, 256)) + b"\x00\x01", "fe" + bytes(range(3, 256)).hex() + "0201"),
    ],
)
def test_cobs_matches_the_paper_examples(data: bytes, encoded: str) -> None:
    # The cases are the reference examples of the COBS article (Cheshire & Baker).
    assert cobs_encode(data).hex() == encoded
    assert cobs_decode(bytes.fromhex(encoded)) == data


@given(st.binary(max_size=1200))
def test_cobs_round_trip_and_overhead(data: bytes) -> None:
    enc = cobs_encode(data)
    assert 0 not in enc
    assert len(enc) <= len(data) + 1 + len(data) // 254
    assert cobs_decode(enc) == data


def test_max_payload_always_fits() -> None:
    for max_frame in (32, 64, 100, 253, 254, 255, 256, 508, 509, 1024, 4096):
        worst = b"\x01" * max_payload(max_frame)  # no zeros: the largest COBS overhead
        frame = frame_payload(worst, max_frame)
        assert len(frame) - 1 <= max_frame
    assert max_payload(256) == 252


@pytest.mark.parametrize("vector", VALID, ids=[v["description"] for v in VALID])
def test_vector_decodes_and_encodes(vector: dict) -> None:
    frame = bytes.fromhex(vector["frame"])
    assert frame[-1] == 0
    assert 0 not in frame[:-1]
    msg = decode_frame(frame[:-1])
    assert same_json(message_to_json(msg), vector["message"])
    assert message_from_json(vector["message"]) == msg
    assert encode_frame(msg) == frame
    assert encode_payload(msg).hex() == vector["payload"]
    assert f"{crc16(encode_payload(msg)):04x}" == vector["crc"]
    # cbor2 (an independent decoder) reads the same payload
    assert cbor2.loads(bytes.fromhex(vector["payload"]))[1] == msg.seq


@pytest.mark.parametrize("vector", INVALID, ids=[v["description"] for v in INVALID])
def test_vector_is_rejected_for_the_stated_reason(vector: dict) -> None:
    frame = bytes.fromhex(vector["frame"])
    with pytest.raises(BridgeError) as info:
        decode_frame(frame[:-1])
    if vector["error"] == "message":
        assert type(info.value) is MessageError
    else:
        assert type(info.value) is FrameError
        assert info.value.reason == vector["error"]


def test_all_vectors_through_one_stream_byte_by_byte() -> None:
    conn = Connection(Role.HOST, max_frame=256)
    stream = b"".join(bytes.fromhex(v["frame"]) for v in VECTORS)
    events = []
    for i in range(len(stream)):
        conn.receive_data(stream[i : i + 1])
        while (ev := conn.next_event()) is not NEED_DATA:
            events.append(ev)
    assert len(events) == len(VECTORS)
    for vector, ev in zip(VECTORS, events, strict=True):
        if vector["message"] is None:
            assert isinstance(ev, FrameRejected)
        elif vector["message"]["type"] in ("hello_ack", "command"):
            # a host does not accept what only a device receives: rejected, not crashed
            assert isinstance(ev, FrameRejected)
            assert isinstance(ev.error, MessageError)
        else:
            assert same_json(message_to_json(ev), vector["message"])  # type: ignore[arg-type]


def test_decoder_rejects_oversized_frame_and_resynchronises() -> None:
    conn = Connection(Role.DEVICE, max_frame=64)
    good = encode_frame(Command(1, 2, 3))
    conn.receive_data(b"\x55" * 200)  # no delimiter: dropped as soon as it is too long
    assert conn._splitter.buffered <= 64 + 200
    conn.receive_data(b"\x55" * 10 + b"\x00" + good)
    ev = conn.next_event()
    assert isinstance(ev, FrameRejected)
    assert isinstance(ev.error, FrameError)
    assert ev.error.reason == "long"
    assert conn.next_event() == Command(1, 2, 3)
    assert conn.next_event() is NEED_DATA
    assert conn.stats.frames_rejected["long"] == 1
    assert conn._splitter.buffered == 0


def test_splitter_buffer_stays_bounded_under_endless_garbage() -> None:
    sp = FrameSplitter(256)
    longs = 0
    for _ in range(1000):
        sp.feed(b"\xaa" * 100)
        while (f := sp.next_frame()) is not None:
            assert isinstance(f, FrameError)
            longs += 1
        assert sp.buffered <= 256 + 100
    assert longs == 1  # one overlong frame, reported once


def test_garbage_between_frames_is_counted_and_next_frame_decodes() -> None:
    conn = Connection(Role.HOST)
    frames = [encode_frame(Reading(i, 1, i)) for i in range(3)]
    conn.receive_data(frames[0] + b"\x13\x37\xfe\x00" + frames[1][:7] + b"\x00" + frames[2])
    evs = []
    while (ev := conn.next_event()) is not NEED_DATA:
        evs.append(ev)
    assert evs[0] == Reading(0, 1, 0)
    assert isinstance(evs[1], FrameRejected)
    assert isinstance(evs[2], FrameRejected)  # the truncated frame
    assert evs[3] == Reading(2, 1, 2)
    assert sum(conn.stats.frames_rejected.values()) == 2


def test_encoder_refuses_a_frame_above_max_frame() -> None:
    big = Hello(0, (1,), "d" * 32, "f" * 32, 256)
    assert len(encode_frame(big, 256)) < 100
    with pytest.raises(MessageError):
        encode_frame(big, 32)


@pytest.mark.parametrize(
    "bad",
    [
        Reading(0, 256, 1),
        Reading(-1, 1, 1),
        Reading(0, 1, math.nan),
        Reading(0, 1, True),
        Reading(0, 1, 2**63),
        Reading(0, 1, 1, 2**32),
        Command(0, 1, "1"),  # type: ignore[arg-type]
        Hello(0, (), "d", "f", 256),
        Hello(0, (1,), "bad id", "f", 256),
        Hello(0, (1,), "d", "f", 31),
    ],
)
def test_encoder_rejects_invalid_fields(bad: object) -> None:
    with pytest.raises(MessageError):
        encode_payload(bad)  # type: ignore[arg-type]


@given(messages)
@settings(max_examples=300)
def test_message_round_trip(msg: object) -> None:
    payload = encode_payload(msg)  # type: ignore[arg-type]
    back = decode_payload(payload)
    assert same_json(message_to_json(back), message_to_json(msg))  # type: ignore[arg-type]
    assert encode_payload(back) == payload  # deterministic
    assert decode_frame(encode_frame(back, 4096)[:-1], 4096) == back


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.integers(-100, 100) | st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


def _depth(v: object) -> int:
    if isinstance(v, list):
        return 1 + max((_depth(x) for x in v), default=0)
    if isinstance(v, dict):
        return 1 + max((_depth(x) for x in v.values()), default=0)
    return 0


@given(cbor_values)
@settings(max_examples=300)
def test_strict_cbor_decoder_agrees_with_cbor2(value: object) -> None:
    data = cbor2.dumps(value, canonical=True)
    if _depth(value) > _cbor.MAX_DEPTH:
        with pytest.raises(MessageError):
            _cbor.loads(data)
    else:
        assert _cbor.loads(data) == cbor2.loads(data)


@pytest.mark.parametrize(
    "data",
    [
        "9b" + "ff" * 8,  # array of 2^64-1 items
        "bb" + "ff" * 8,  # map of 2^64-1 pairs
        "7b" + "ff" * 8,  # text of 2^64-1 bytes
        "81" * 10 + "00",  # too deep
        "d9d9f7a0",  # self-described CBOR tag
        "d81c81d81d00",  # shared reference (would build a cycle in cbor2)
        "9f00ff",  # indefinite array
        "f7",  # undefined
        "f820",  # simple value
        "1c",  # reserved additional information
        "",
        "a1000000",
        "a200000001",  # duplicate key
    ],
)
def test_strict_cbor_decoder_rejects(data: str) -> None:
    with pytest.raises(MessageError):
        _cbor.loads(bytes.fromhex(data))


def test_strict_cbor_decoder_bounds_items() -> None:
    data = bytes([0x99, 0x02, 0x00]) + b"\x00" * 512  # 512 items + the array
    with pytest.raises(MessageError, match="too many"):
        _cbor.loads(data)


# -- deterministic encoding: the shortest float that holds the value exactly ---------


def test_every_finite_half_is_encoded_in_two_bytes() -> None:
    # cbor2 5.9's C encoder wrote the 2,048 halves of exponent 15 (|v| in 32768..65504)
    # as float32; the C codec re-encoded them in two bytes and the codecs disagreed.
    half = struct.Struct(">e")
    for bits in range(0x10000):
        if (bits >> 10) & 0x1F == 0x1F:
            continue  # infinities and NaNs
        raw = bits.to_bytes(2, "big")
        assert _cbor.encode_float(half.unpack(raw)[0]) == b"\xf9" + raw, raw.hex()


def _oracle_width(value: float) -> int:
    """2, 4 or 8: the narrowest IEEE format holding ``value`` exactly, by numpy."""
    with np.errstate(over="ignore"):
        if float(np.float16(value)) == value:
            return 2
        if float(np.float32(value)) == value:
            return 4
    return 8


@pytest.mark.parametrize(
    "value",
    [60000.0, 65504.0, -32768.0, 65520.0, 65519.99, 4095.0, 2.0**-24, 2.0**-25, 2.0**-149,
     3.4028234663852886e38, 1e300, -0.0, 0.1, math.inf, -math.inf],
)  # fmt: skip
def test_float_boundaries_take_the_narrowest_exact_width(value: float) -> None:
    encoded = _cbor.encode_float(value)
    assert len(encoded) - 1 == _oracle_width(value)
    assert math.copysign(1, _cbor.loads(encoded)) == math.copysign(1, value)
    assert _cbor.loads(encoded) == value


@given(
    st.floats(allow_nan=False)
    | st.floats(width=32, allow_nan=False)
    | st.floats(width=16, allow_nan=False)
)
@settings(max_examples=500)
def test_float_encoding_is_the_narrowest_exact_width(value: float) -> None:
    encoded = _cbor.encode_float(value)
    assert len(encoded) - 1 == _oracle_width(value)
    back = _cbor.loads(encoded)
    assert back == value
    assert math.copysign(1, back) == math.copysign(1, value)
    assert cbor2.loads(encoded) == value  # an independent decoder agrees


@given(cbor_values)
@settings(max_examples=300)
def test_encoder_output_is_read_back_by_cbor2_and_is_deterministic(value: object) -> None:
    data = _cbor.dumps(value)
    assert cbor2.loads(data) == value
    if _depth(value) <= _cbor.MAX_DEPTH:
        assert _cbor.dumps(_cbor.loads(data)) == data


def test_encoder_sorts_keys_by_their_encoded_bytes() -> None:
    # RFC 8949 4.2.1: 10 (0a) < 100 (1864) < -1 (20); cbor2's canonical order is length-first
    assert _cbor.dumps({-1: 0, 100: 0, 10: 0}).hex() == "a30a00186400" + "2000"
    # non-negative keys only (the fast path): numeric order is the encoded order
    keys = [2**64 - 1, 65536, 0, 256, 2**32, 23, 65535, 24, 255]
    encoded = _cbor.dumps(dict.fromkeys(keys, 0))
    assert list(cbor2.loads(encoded)) == sorted(keys)  # decoded in wire order
    # the general path (a text key forces it) orders the same keys the same way
    mixed = cbor2.loads(_cbor.dumps({**dict.fromkeys(keys, 0), "x": 0}))
    assert list(mixed) == [*sorted(keys), "x"]


@pytest.mark.parametrize("bad", [object(), 2**64, -(2**64) - 1, {1.5: 0}, {(): 0}, "\ud800"])
def test_encoder_rejects_values_outside_the_data_model(bad: object) -> None:
    with pytest.raises(MessageError):
        _cbor.dumps(bad)


# -- fuzz: any input is decoded or rejected with BridgeError, never anything else ----


def _decode_or_reject(data: bytes) -> None:
    with contextlib.suppress(BridgeError):
        decode_frame(data)


@given(messages, st.data())
@settings(max_examples=400)
def test_fuzz_truncated_and_bit_flipped_frames(msg: object, data: st.DataObject) -> None:
    frame = encode_frame(msg, 4096)[:-1]  # type: ignore[arg-type]
    cut = data.draw(st.integers(0, len(frame)))
    _decode_or_reject(frame[:cut])
    flips = data.draw(st.lists(st.integers(0, len(frame) * 8 - 1), min_size=1, max_size=3))
    mutated = bytearray(frame)
    for bit in flips:
        mutated[bit // 8] ^= 1 << (bit % 8)
    _decode_or_reject(bytes(mutated))
    # the same mutated bytes through a stream, byte by byte, then a good frame
    conn = Connection(Role.HOST, max_frame=4096)
    for b in bytes(mutated) + b"\x00":
        conn.receive_data(bytes([b]))
        while conn.next_event() is not NEED_DATA:
            pass
    conn.receive_data(encode_frame(Reading(1, 2, 3)))
    assert conn.next_event() == Reading(1, 2, 3)


@given(st.binary(max_size=600))
@settings(max_examples=400)
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_or_reject(data)
    with contextlib.suppress(BridgeError):
        decode_payload(data)
    conn = Connection(Role.DEVICE)
    conn.receive_data(data)
    while conn.next_event() is not NEED_DATA:
        pass


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_fuzz_random_payload_in_a_valid_frame(payload: bytes) -> None:
    # A correct CRC around arbitrary bytes exercises the CBOR and schema layers.
    frame = frame_payload(payload, 4096)[:-1]
    if not payload:
        with pytest.raises(FrameError, match="shorter"):
            decode_frame(frame, 4096)
        return
    with contextlib.suppress(MessageError):
        decode_frame(frame, 4096)

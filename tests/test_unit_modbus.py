"""The ``modbus`` unit kind: its codec (pure, fuzzed), its options, and the unit against
pymodbus's own server in another process, over TCP on loopback and over RTU on a pair
of pseudo-terminals. Real time, each test bounded."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from support.brokers import Mosquitto, free_port, mosquitto, mosquitto_factory  # noqa: F401
from support.mesh import AgentProcess, wait_until
from support.modbus_server import ServerProcess, null_modem
from support.vsm import config, running

from vsm_edge.agent import Runtime, UnitError
from vsm_edge.agent.units.modbus import ModbusUnit, Register, decode, encode
from vsm_edge.agent.vsm.unit import load_unit
from vsm_edge.sync import MemoryBroker

# --- the codec ---------------------------------------------------------------------


def test_decode_types_word_orders_scale_and_offset() -> None:
    assert decode(Register("t", "holding", 0, "int16", scale=0.1), [0xFF38]) == pytest.approx(-20.0)
    assert decode(Register("t", "input", 0, "uint16"), [0xFF38]) == 0xFF38
    assert decode(Register("e", "holding", 0, "uint32"), [0x0001, 0x0002]) == 0x00010002
    assert decode(Register("e", "holding", 0, "uint32", "little"), [0x0002, 0x0001]) == 0x00010002
    assert decode(Register("e", "holding", 0, "int32"), [0xFFFF, 0xFFFE]) == -2
    hi, lo = struct.unpack(">HH", struct.pack(">f", 21.5))
    assert decode(Register("f", "holding", 0, "float32"), [hi, lo]) == 21.5
    assert decode(Register("f", "holding", 0, "float32", "little"), [lo, hi]) == 21.5
    assert decode(Register("p", "holding", 0, offset=-40.0, scale=0.5), [100]) == 10.0
    assert decode(Register("c", "coil", 3), [True, False, False]) == 1.0
    assert decode(Register("c", "discrete", 3), [False]) == 0.0


@pytest.mark.parametrize(
    ("register", "words", "reason"),
    [
        (Register("x", "holding", 0, "int32"), [1], "1 values in the reply, expected 2"),
        (Register("x", "holding", 0), [70000], "70000 is not a 16-bit register value"),
        (Register("x", "holding", 0), [-1], "is not a 16-bit register value"),
        (Register("x", "holding", 0), [True], "is not a 16-bit register value"),
        (Register("x", "holding", 0), ["1"], "is not a 16-bit register value"),
        (Register("x", "holding", 0, "float32"), [0x7FC0, 0], "not finite"),  # NaN
        (Register("x", "holding", 0, "float32"), [0x7F80, 0], "not finite"),  # +inf
        (Register("x", "coil", 0), [2], "is not a bit"),
        (Register("x", "coil", 0), [], "0 values in the reply"),
    ],
)
def test_decode_refuses_what_a_device_must_not_send(
    register: Register, words: list[Any], reason: str
) -> None:
    with pytest.raises(UnitError, match=reason):
        decode(register, words)


def test_encode_inverts_scale_offset_and_word_order() -> None:
    assert encode(Register("s", "holding", 0, scale=0.1), 21.5) == [215]
    assert encode(Register("s", "holding", 0, "int16"), -2) == [0xFFFE]
    assert encode(Register("s", "holding", 0, "uint32", "little"), 0x00010002) == [2, 1]
    assert encode(Register("s", "holding", 0, offset=-40, scale=0.5), 10) == [100]
    assert encode(Register("c", "coil", 0), True) is True
    with pytest.raises(UnitError, match=r"raw value 70000 is outside uint16 \(0..65535\)"):
        encode(Register("s", "holding", 0, "uint16"), 70000)
    with pytest.raises(UnitError, match="does not fit a float32"):
        encode(Register("s", "holding", 0, "float32"), 1e300)


REGISTERS = st.builds(
    Register,
    name=st.just("r"),
    table=st.sampled_from(["holding", "input", "coil", "discrete"]),
    address=st.integers(0, 0xFFFF),
    type=st.sampled_from(["int16", "uint16", "int32", "uint32", "float32"]),
    word_order=st.sampled_from(["big", "little"]),
    scale=st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != 0),
    offset=st.floats(allow_nan=False, allow_infinity=False),
)
JUNK = st.lists(
    st.one_of(st.integers(-(2**40), 2**40), st.booleans(), st.floats(), st.text(max_size=3),
              st.none(), st.binary(max_size=3)),
    max_size=5,
)  # fmt: skip


@given(REGISTERS, JUNK)
def test_decode_fuzz_any_reply_is_a_finite_value_or_a_unit_error(
    register: Register, words: list[Any]
) -> None:
    try:
        value = decode(register, words)
    except UnitError:
        return
    assert math.isfinite(value)


@given(REGISTERS, st.floats(allow_nan=False, allow_infinity=False))
def test_encode_fuzz_any_value_is_words_or_a_unit_error(register: Register, value: float) -> None:
    try:
        out = encode(register, value)
    except UnitError:
        return
    if register.bits:
        assert isinstance(out, bool)
    else:
        assert isinstance(out, list)
        assert len(out) == register.count
        assert all(0 <= w <= 0xFFFF for w in out)


@given(st.sampled_from(["int16", "uint16", "int32", "uint32"]), st.integers(-(2**31), 2**32 - 1),
       st.sampled_from(["big", "little"]))  # fmt: skip
def test_integers_round_trip(dtype: str, raw: int, order: str) -> None:
    register = Register("r", "holding", 0, dtype, order)
    try:
        words = encode(register, raw)
    except UnitError:
        return
    assert isinstance(words, list)
    assert decode(register, words) == raw


# --- options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"registers": [{"name": "t", "address": 1}]}, "give either host"),
        ({"host": "h", "serial_port": "/dev/x", "registers": []}, "give either host"),
        ({"host": "h", "registers": []}, "registers must be a non-empty list"),
        ({"host": "h", "registers": [{"name": "t"}]}, r"registers\[0\] \(t\): address must be"),
        ({"host": "h", "registers": [{"name": "t", "address": 1, "type": "int64"}]},
         "type must be one of int16"),
        ({"host": "h", "registers": [{"name": "t", "address": 1, "table": "input",
                                      "writable": True}]}, "only holding registers and coils"),
        ({"host": "h", "registers": [{"name": "t", "address": 1, "scale": 0}]},
         "scale must not be 0"),
        ({"host": "h", "registers": [{"name": "t", "address": 1}, {"name": "t", "address": 2}]},
         "two registers have one name"),
        ({"host": "h", "baudrate": 9600, "registers": [{"name": "t", "address": 1}]},
         "baudrate is for serial_port"),
        ({"host": "h", "registers": [{"name": "t", "address": 1, "colour": 1}]},
         "unknown key 'colour'"),
        ({"host": "h", "registers": [{"name": f"r{i}", "address": i} for i in range(65)]},
         "at most 64 registers"),
    ],
)  # fmt: skip
def test_bad_options_are_one_clear_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UnitError, match=message):
        load_unit("plc", "modbus", options)


def test_the_unit_declares_readings_and_commands_from_its_registers() -> None:
    made = load_unit("plc", "modbus", _options({"host": "127.0.0.1", "port": 1502}))
    assert [r.name for r in made.readings] == ["temperature", "energy", "setpoint", "pump"]
    assert (made.readings[0].unit, made.readings[0].resolution) == ("°C", 0.1)
    assert [(c.name, c.kind, c.minimum, c.maximum) for c in made.commands] == [
        ("setpoint", "number", 5.0, 30.0), ("pump", "bool", None, None)]  # fmt: skip


# --- against a real server --------------------------------------------------------

# temperature 21.5 °C as int16 tenths at 0; energy 70000 Wh as uint32 (little word
# order) at 2; setpoint 20.0 as int16 tenths at 10; the pump's coil at 5.
SERVER_VALUES = ("--set", "hr:0=215", "--set", "ir:2=4464,1", "--set", "hr:10=200",
                 "--set", "co:5=1")  # fmt: skip


def _options(where: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        **where,
        "period_s": 0.1,
        "timeout_s": 0.5,
        "registers": [
            {"name": "temperature", "address": 0, "scale": 0.1, "unit": "°C", "resolution": 0.1},
            {"name": "energy", "table": "input", "address": 2, "type": "uint32",
             "word_order": "little", "unit": "Wh"},
            {"name": "setpoint", "address": 10, "scale": 0.1, "writable": True,
             "minimum": 5, "maximum": 30},
            {"name": "pump", "table": "coil", "address": 5, "writable": True},
        ],
        **extra,
    }  # fmt: skip


def _latest(rt: Runtime, reading: str) -> float | None:
    unit = rt.units["plc"].unit
    assert isinstance(unit, ModbusUnit)
    return unit.values.get(reading)


def _pain(rt: Runtime) -> list[tuple[str, bool]]:
    return [
        (a.signal.valence, a.acked_at is not None)
        for a in rt.algedonic.alarms.values()
        if a.signal.source == "s1.plc"
    ]


async def _until(predicate: Any, what: str, timeout: float = 15.0) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


def _read_holding(port: int, address: int, count: int) -> list[int]:
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
    try:
        assert client.connect()
        return list(client.read_holding_registers(address, count=count, device_id=1).registers)
    finally:
        client.close()


@pytest.mark.integration
async def test_tcp_readings_reach_a_peer_and_a_command_writes_the_register(tmp_path: Any) -> None:
    from vsm_edge.agent.mesh.node import Agent

    port = free_port()
    server = ServerProcess("tcp", str(port), *SERVER_VALUES)
    broker = MemoryBroker()

    def agent(name: str, units: list[dict[str, Any]]) -> Agent:
        data_dir = tmp_path / name
        data_dir.mkdir()
        cfg = config(
            {"node": {"id": name}, "discovery": {"enabled": False}, "units": units},
            data_dir=data_dir,
        )
        return Agent(cfg, transport_factory=lambda will: broker.transport(name, will=will))

    plc = {"name": "plc", "kind": "modbus", "options": _options({"host": "127.0.0.1",
                                                                  "port": port})}  # fmt: skip
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                a = await nursery.start(agent("n1", [plc]).run)
                b = await nursery.start(agent("n2", []).run)
                assert a.runtime is not None

                def at_b(key: str) -> Any:
                    assert b.replicator is not None
                    return b.replicator.docs["mesh"].state.value().get(key)

                # the device's values, decoded, reach the peer through the mesh
                await _until(lambda: at_b("n1/r/plc.temperature") is not None, "at n2")
                await _until(lambda: at_b("n1/r/plc.energy") is not None, "energy at n2")
                await _until(lambda: at_b("n1/r/plc.pump") is not None, "pump at n2")
                assert at_b("n1/r/plc.temperature")[0] == pytest.approx(21.5)
                assert at_b("n1/r/plc.energy")[0] == 70000
                assert at_b("n1/r/plc.pump")[0] == 1.0
                # a command writes the server's register (scale inverted: 22.5 -> 225)
                result = await a.runtime.execute_command("plc", "setpoint", 22.5)
                assert result.accepted, result.reason
                assert await trio.to_thread.run_sync(_read_holding, port, 10, 1) == [225]
                await _until(lambda: _latest(a.runtime, "setpoint") == pytest.approx(22.5),
                             "the setpoint read back")  # fmt: skip
                off = await a.runtime.execute_command("plc", "pump", False)
                assert off.accepted, off.reason
                await _until(lambda: _latest(a.runtime, "pump") == 0.0, "the coil read back")
                # out of the configured range: refused before the device
                high = await a.runtime.execute_command("plc", "setpoint", 31)
                assert not high.accepted
                assert "above maximum 30" in high.reason
                assert await trio.to_thread.run_sync(_read_holding, port, 10, 1) == [225]
                a.stop()
                b.stop()
    finally:
        server.stop()


@pytest.mark.integration
async def test_rtu_over_a_pseudo_terminal_pair() -> None:
    with null_modem() as (unit_end, device_end):
        server = ServerProcess("rtu", device_end, "--baudrate", "19200", *SERVER_VALUES)
        try:
            options = _options({"serial_port": unit_end, "baudrate": 19200})
            cfg = config({"units": [{"name": "plc", "kind": "modbus", "options": options}]})
            with trio.fail_after(60):
                async with running(cfg) as rt:
                    await _until(lambda: _latest(rt, "temperature") is not None, "a reading")
                    await _until(lambda: _latest(rt, "pump") is not None, "the coil")
                    assert _latest(rt, "temperature") == pytest.approx(21.5)
                    assert _latest(rt, "energy") == 70000
                    result = await rt.execute_command("plc", "setpoint", 7.5)
                    assert result.accepted, result.reason
                    # read back from the device over the serial line: the register holds 75
                    await _until(lambda: _latest(rt, "setpoint") == pytest.approx(7.5),
                                 "the setpoint read back")  # fmt: skip
                    detail = rt.status().s1.units["plc"].to_json()["detail"]
                    assert detail["endpoint"] == f"rtu:{unit_end}"
                    assert detail["writes"] == 1
                    assert detail["failures"] == 0
                    assert _pain(rt) == []
                    rt.stop()
        finally:
            server.stop()


@pytest.mark.integration
async def test_a_silent_device_is_pain_and_its_return_clears_it() -> None:
    port = free_port()  # nothing listens yet
    options = _options({"host": "127.0.0.1", "port": port}, backoff_max_s=0.3)
    cfg = config({"units": [{"name": "plc", "kind": "modbus", "options": options}]})
    with trio.fail_after(60):
        async with running(cfg) as rt:
            await _until(lambda: ("pain", False) in _pain(rt), "pain")
            alarm = next(a for a in rt.algedonic.alarms.values() if a.signal.source == "s1.plc")
            assert alarm.signal.reason == f"modbus tcp://127.0.0.1:{port}: cannot connect"
            refused = await rt.execute_command("plc", "setpoint", 20)
            assert not refused.accepted
            assert "cannot connect" in refused.reason
            server = await trio.to_thread.run_sync(
                lambda: ServerProcess("tcp", str(port), *SERVER_VALUES)
            )
            try:
                await _until(lambda: _pain(rt)[-1:] == [("pleasure", False)], "cleared")
                assert _pain(rt) == [("pain", True), ("pleasure", False)]
                await _until(lambda: _latest(rt, "temperature") is not None, "readings")
                detail = rt.status().s1.units["plc"].to_json()["detail"]
                assert detail["failures"] >= 1
            finally:
                server.stop()
            rt.stop()


@pytest.mark.integration
async def test_an_exception_response_is_pain_with_its_reason() -> None:
    port = free_port()
    server = ServerProcess("tcp", str(port), *SERVER_VALUES)
    try:
        options = {"host": "127.0.0.1", "port": port, "period_s": 0.1, "timeout_s": 0.5,
                   "registers": [{"name": "far", "address": 500}]}  # fmt: skip
        cfg = config({"units": [{"name": "plc", "kind": "modbus", "options": options}]})
        with trio.fail_after(30):
            async with running(cfg) as rt:
                await _until(lambda: ("pain", False) in _pain(rt), "pain")
                alarm = next(a for a in rt.algedonic.alarms.values() if a.signal.source == "s1.plc")
                assert alarm.signal.reason == (
                    f"modbus tcp://127.0.0.1:{port}: reading holding 500 (far): "
                    "exception code 2 (illegal data address)"
                )
                rt.stop()
    finally:
        server.stop()


MODBUS_TOML = """
[[units]]
name = "plc"
kind = "modbus"
[units.options]
host = "127.0.0.1"
port = {port}
period_s = 0.2

[[units.options.registers]]
name = "temperature"
address = 0
scale = 0.1
unit = "°C"

[[units.options.registers]]
name = "energy"
table = "input"
address = 2
type = "uint32"
word_order = "little"
"""


@pytest.mark.integration
def test_a_vsm_edge_run_process_reads_the_device_and_a_peer_process_sees_it(
    tmp_path: Any, mosquitto: Mosquitto
) -> None:
    port = free_port()
    server = ServerProcess("tcp", str(port), *SERVER_VALUES)
    a = AgentProcess(tmp_path, "a1", mosquitto.url, sensors=0)
    with a.config_path.open("a") as toml:
        toml.write(MODBUS_TOML.format(port=port))
    b = AgentProcess(tmp_path, "b1", mosquitto.url, sensors=0)
    try:
        a.start()
        b.start()

        def at_b() -> dict[str, Any] | None:
            if b.status() is None:
                return None
            client = b.client()
            assert client is not None
            _, view = client.request("GET", "/view.json")
            for node in view["nodes"]:
                if node["node"] == "a1" and {"plc.temperature", "plc.energy"} <= set(
                    node["readings"]
                ):
                    return dict(node["readings"])
            return None

        readings = wait_until(at_b, 60, "a1's modbus readings in b1's view")
        assert readings["plc.temperature"] == pytest.approx(21.5)
        assert readings["plc.energy"] == 70000
        unit = a.wait_status()["s1"]["units"]["plc"]
        assert unit["kind"] == "modbus"
        assert unit["detail"]["failures"] == 0
    finally:
        a.stop()
        b.stop()
        server.stop()


@pytest.mark.integration
async def test_a_device_that_accepts_but_never_answers_is_a_timeout_and_pain() -> None:
    # a TCP listener that takes the connection and the request, and says nothing
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    held: list[trio.socket.SocketType] = []

    async def mute() -> None:
        while True:
            conn, _ = await listener.accept()
            held.append(conn)

    options = {"host": "127.0.0.1", "port": port, "period_s": 0.1, "timeout_s": 0.3,
               "registers": [{"name": "t", "address": 0}]}  # fmt: skip
    cfg = config({"units": [{"name": "plc", "kind": "modbus", "options": options}]})
    with trio.fail_after(30), listener:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mute)
            async with running(cfg) as rt:
                await _until(lambda: ("pain", False) in _pain(rt), "pain")
                alarm = next(a for a in rt.algedonic.alarms.values() if a.signal.source == "s1.plc")
                assert alarm.signal.reason == (
                    f"modbus tcp://127.0.0.1:{port}: reading holding 0 (t): no answer within 0.3 s"
                )
                assert held  # it did connect: the failure is the silence
                detail = rt.status().s1.units["plc"].to_json()["detail"]
                assert detail["polls"] >= 1
                assert detail["failures"] >= 1
                rt.stop()
            nursery.cancel_scope.cancel()
        for conn in held:
            conn.close()

"""Metrics from status documents, the dashboard's view, and the read-only HTTP server."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from support.status_scenario import agent_document

from vsm_edge.agent import StatusError
from vsm_edge.agent.mesh.status import NodeStatus
from vsm_edge.agent.web.http import HttpResponse, ReadOnlyServer, json_response
from vsm_edge.agent.web.metrics import agent_families, render, view_families
from vsm_edge.agent.web.view import (
    LagTracker,
    alarm_entry,
    build_view,
    format_ms,
    mesh_nodes,
    mesh_observers,
    percentiles,
)


def status_document() -> dict[str, Any]:
    """A live agent's status document (captured), with known values where the test looks."""
    doc = agent_document()
    doc["node"].update(id="n1", mesh="m", zone="z", uptime_s=12.5, safe_mode=False)
    for i, s in enumerate(("s1", "s2", "s3", "s4", "s5"), 1):
        doc["s3"]["budgets"][s] = {
            "tokens": 10.0 * i, "capacity": 100, "refill_per_s": 5.0, "passed": 7 * i,
        }
    doc["s3"]["attenuation"].update(active=True, aggregated={"temp": 3}, dropped={"temp": 2})
    doc["s4"].update(variety={"s1": 2.5, "s2": 0.0, "s3": 0.1, "s4": 0.0, "s5": 0.0},
                     environment_bits=2.5, system_bits=3.0, variety_ratio=0.83)
    doc["s1"]["channel"]["dropped"] = 4
    [alarm] = doc["algedonic"]["alarms"]
    doc["algedonic"]["alarms"] = [
        dict(alarm, id="a", intensity=0.7, valence="pain", acked=False),
        dict(alarm, id="b", intensity=0.9, valence="pain", acked=True),
        dict(alarm, id="c", intensity=0.99, valence="pleasure", acked=False),
    ]
    doc["algedonic"]["counters"].update(received=5, delivered=3, adapted=2)
    doc["gateway"].update(allow=40, deny=2, maybe=1, reasons={"fresh": 40, "replay": 2},
                          quarantined=0)
    rep = doc["replication"]
    rep["latency_ms"] = {"count": 9, "p50": 12.0, "p99": 80.0, "max": 95.0}
    rep["transport"].update(state="connected", messages_in=10, messages_out=11, bytes_in=1000,
                            bytes_out=1100, reconnects=1)
    rep.update(refused={"unknown-key": 3}, online_peers=["n2", "n3"], keys=8)
    [peer] = doc["peers"]
    doc["peers"] = [dict(peer, node="n2", stale=False), dict(peer, node="n4", stale=True)]
    return doc  # fmt: skip


STATUS = status_document()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_agent_metrics_from_a_status_document() -> None:
    got = samples(render(agent_families(NodeStatus.from_json(STATUS))).decode())
    n = (("node", "n1"),)
    assert got[("vsm_node_info", (("mesh", "m"), ("node", "n1"), ("zone", "z")))] == 1
    assert got[("vsm_budget_tokens", (("node", "n1"), ("subsystem", "s2")))] == 20.0
    assert got[("vsm_budget_passed_total", (("node", "n1"), ("subsystem", "s5")))] == 35
    assert got[("vsm_variety_bits", (("node", "n1"), ("subsystem", "s1")))] == 2.5
    assert got[("vsm_variety_ratio", n)] == 0.83
    assert got[("vsm_attenuated_total", (("kind", "dropped"), ("node", "n1")))] == 2
    assert got[("vsm_algedonic_active_alarms", n)] == 2  # "b" is acknowledged
    assert got[("vsm_algedonic_pain", n)] == 0.7  # "c" is pleasure
    assert got[("vsm_algedonic_signals_total", (("node", "n1"), ("outcome", "adapted")))] == 2
    assert got[("vsm_gateway_decisions_total", (("node", "n1"), ("verdict", "deny")))] == 2
    assert got[("vsm_gateway_reasons_total", (("node", "n1"), ("reason", "replay")))] == 2
    assert got[("vsm_replication_lag_ms", (("node", "n1"), ("quantile", "0.99")))] == 80.0
    assert got[("vsm_peers", (("node", "n1"), ("state", "online")))] == 2
    assert got[("vsm_peers", (("node", "n1"), ("state", "stale")))] == 1
    assert got[("vsm_mqtt_connected", n)] == 1
    assert got[("vsm_replication_refused_total", (("node", "n1"), ("reason", "unknown-key")))] == 3
    assert got[("vsm_bus_dropped_total", (("channel", "s1"), ("node", "n1")))] == 4


def test_broker_metrics_from_the_broker_section() -> None:
    doc = status_document()
    doc["broker"].update(state="refused", attempts=4, refused="Not authorized", connects=2,
                         reconnects=1, connect_failures=6, connections_lost=1)  # fmt: skip
    got = samples(render(agent_families(NodeStatus.from_json(doc))).decode())
    n = (("node", "n1"),)
    assert got[("vsm_broker_connected", n)] == 0
    assert got[("vsm_broker_refused", n)] == 1
    assert got[("vsm_broker_reconnect_attempts", n)] == 4
    assert got[("vsm_broker_reconnects_total", n)] == 1
    assert got[("vsm_broker_connect_failures_total", n)] == 6
    assert got[("vsm_broker_connections_lost_total", n)] == 1
    doc["broker"].update(state="connected", attempts=0, refused=None)
    got = samples(render(agent_families(NodeStatus.from_json(doc))).decode())
    assert (got[("vsm_broker_connected", n)], got[("vsm_broker_refused", n)]) == (1, 0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def test_a_broken_section_yields_no_metrics_of_it() -> None:
    doc = status_document()
    doc["gateway"] = {"error": "RuntimeError('boom')"}
    del doc["replication"]
    got = samples(render(agent_families(NodeStatus.from_json(doc))).decode())
    assert not [name for name, _ in got if "gateway" in name or "mqtt" in name]
    assert got[("vsm_variety_ratio", (("node", "n1"),))] == 0.83


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from([*sorted(STATUS), "x"]), json_values, max_size=8))
def test_any_status_document_is_read_or_refused_and_renders(changes: dict[str, Any]) -> None:
    # Parsed at the edge: a malformed document is one StatusError; a read one always renders.
    doc = {**STATUS, **changes}
    try:
        status = NodeStatus.from_json(doc)
    except StatusError:
        pass
    else:
        list(text_string_to_metric_families(render(agent_families(status)).decode()))
    view = {"nodes": [doc], "meshes": [doc], "alarms": [doc], "source": doc}
    list(text_string_to_metric_families(render(view_families(view)).decode()))


def test_view_metrics_label_mesh_and_node() -> None:
    view = build_view(
        "aggregator", "agg", 1000,
        [{"mesh": "m", "online_peers": ["n1"], "replication": STATUS["replication"],
          "gateway": STATUS["gateway"]}],
        [{"mesh": "m", "node": "n1", "online": True, "health": 0.5, "safe_mode": True,
          "variety_ratio": 1.4, "alarms": ["a"], "report_age_s": 1.0, "readings": {"t": 1.0},
          "lag_ms": {"count": 2, "p50": 5.0, "p99": 9.0, "max": 9.0}}],
        [{"mesh": "m", "node": "n1", "id": "a", "source": "s1.t", "intensity": 0.8,
          "valence": "pain"}],
    )  # fmt: skip
    got = samples(render(view_families(view)).decode())
    mn = (("mesh", "m"), ("node", "n1"))
    assert got[("vsm_health", mn)] == 0.5
    assert got[("vsm_safe_mode", mn)] == 1
    assert got[("vsm_replication_lag_ms", (*mn, ("quantile", "0.5")))] == 5.0
    agg = (("mesh", "m"), ("node", "agg"), ("verdict", "allow"))
    assert got[("vsm_gateway_decisions_total", agg)] == 40
    assert got[("vsm_algedonic_signal_intensity", (*mn, ("source", "s1.t")))] == 0.8


def test_lag_tracker_is_bounded_per_node_and_in_nodes() -> None:
    lag = LagTracker(per_node=3, max_nodes=2)
    for i in range(10):
        lag.observe("a/r/t.c", [1.0, 1000], 1000 + i)
    assert lag.of("a") == {"count": 3, "p50": 8.0, "p99": 9.0, "max": 9.0}
    lag.observe("b/r/t.c", (1.0, 1000), 1005)
    lag.observe("c/r/t.c", [1.0, 1000], 1001)  # a third origin evicts the oldest
    assert lag.of("a") == {"count": 0}
    assert lag.evicted == 1
    for bad in (("a/report", [1, 2]), ("x/r/t", [1]), ("x/r/t", [1, True]), ("nokey", [1, 2])):
        lag.observe(bad[0], bad[1], 5)
    assert lag.of("x") == {"count": 0}
    assert percentiles([]) == {"count": 0}


def test_mesh_nodes_reads_reports_and_readings_and_skips_junk() -> None:
    values = {
        "n1/report": {"node": "n1", "health": 0.9, "safe": False, "ratio": 1.2,
                      "alarms": ["x", 3], "hlc": 9000, "zone": "z"},
        "n1/r/temp.c": [21.5, 8000],
        "n1/r/bad.v": ["hot", 8000],
        "n2/r/hum.p": (40.0, 8000),
        "n3/report": "garbage",
        "/r/x": [1.0, 1],
        7: "not a key",
    }  # fmt: skip
    lag = LagTracker()
    online = {"n1": True, "n4": True, "n5": False}
    nodes = mesh_nodes("m", values, now_ms=10_000, online=online, lag=lag, self_node="n2",
                       units={"n1": {"temp.c": "°C", "hum.p": "%"}})  # fmt: skip
    by = {n["node"]: n for n in nodes}
    assert sorted(by) == ["n1", "n2"]  # n4 is online but wrote nothing: not a node
    assert by["n1"]["health"] == 0.9
    assert by["n1"]["alarms"] == ["x"]
    assert by["n1"]["report_age_s"] == 1.0
    assert by["n1"]["readings"] == {"temp.c": 21.5}
    assert by["n2"]["self"] is True
    assert by["n2"]["online"] is True
    assert by["n1"]["units"] == {"temp.c": "°C"}  # units of readings it has
    assert by["n2"]["units"] == {}  # not known here
    # an online peer that wrote nothing (the aggregator, a node before its first
    # report) is an observer; an offline one is neither
    assert mesh_observers("m", nodes, online) == [{"mesh": "m", "node": "n4", "online": True}]


def test_an_agent_with_nothing_written_yet_is_still_a_node_of_its_own_view() -> None:
    nodes = mesh_nodes("m", {}, now_ms=0, online={"agg-x": True}, lag=LagTracker(),
                       self_node="n1")  # fmt: skip
    assert [(n["node"], n["self"], n["online"]) for n in nodes] == [("n1", True, True)]
    assert mesh_observers("m", nodes, {"agg-x": True})[0]["node"] == "agg-x"


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (None, "\u2013"), ("12", "\u2013"), (float("nan"), "\u2013"), (-1, "\u2013"),
        (True, "\u2013"), (0, "0.0 ms"), (2.345, "2.3 ms"), (12.4, "12 ms"), (999.4, "999 ms"),
        (999.5, "1.0 s"), (1500, "1.5 s"), (59_949, "59.9 s"), (59_950, "1.0 min"),
        (138_000, "2.3 min"), (3_597_000, "1.0 h"), (7_200_000, "2.0 h"),
    ],
)  # fmt: skip
def test_format_ms_gives_the_unit(ms: Any, text: str) -> None:
    assert format_ms(ms) == text


def test_mesh_nodes_formats_lag_with_units() -> None:
    lag = LagTracker()
    for ms in (40, 40, 2500):
        lag.observe("n1/r/t.c", [1.0, 0], ms)
    [node] = mesh_nodes("m", {"n1/r/t.c": [1.0, 0]}, now_ms=0, online={}, lag=lag)
    assert node["lag_text"] == {"p50": "40 ms", "p99": "2.5 s"}
    [quiet] = mesh_nodes("m", {"n2/r/t.c": [1.0, 0]}, now_ms=0, online={}, lag=lag)
    assert quiet["lag_text"] == {"p50": "\u2013", "p99": "\u2013"}


def _alarm(
    id_: str,
    *,
    intensity: float,
    age_s: float,
    critical: bool = False,
    valence: str = "pain",
    acked: bool | None = False,
) -> dict[str, Any]:
    return alarm_entry(mesh="m", node="n1", id=id_, source="s", intensity=intensity,
                       valence=valence, reason=id_, age_s=age_s, critical=critical,
                       acked=acked)  # fmt: skip


def test_alarms_sort_critical_first_then_intensity_then_newest() -> None:
    alarms = [
        _alarm("weak-new", intensity=0.3, age_s=1),
        _alarm("strong-old", intensity=0.9, age_s=50),
        _alarm("strong-new", intensity=0.9, age_s=5),
        _alarm("crit-old-acked", intensity=0.96, age_s=100, critical=True, acked=True),
        _alarm("crit-strong", intensity=1.0, age_s=200, critical=True),
        _alarm("crit-new", intensity=0.96, age_s=2, critical=True, acked=None),
        # a strong non-critical one (critical is S5's judgement, not a threshold here)
        _alarm("strong-not-critical", intensity=0.99, age_s=1),
    ]
    view = build_view("agent", "n1", 0, [], [], alarms)
    assert [a["id"] for a in view["alarms"]] == [
        "crit-strong", "crit-new", "crit-old-acked", "strong-not-critical", "strong-new",
        "strong-old", "weak-new",
    ]  # fmt: skip
    by = {a["id"]: a for a in view["alarms"]}
    assert by["crit-old-acked"]["acked"] is True
    assert by["crit-new"]["acked"] is None  # the source cannot tell
    assert by["weak-new"]["acked_by"] is None  # not in the data yet
    assert view["events"] == []


def test_good_news_is_an_event_not_an_alarm_nor_counted_red() -> None:
    node = {"mesh": "m", "node": "n1", "alarms": ["pain1", "joy1", "unknown"]}
    alarms = [
        _alarm("joy-old", intensity=0.3, age_s=40, valence="pleasure"),
        _alarm("pain1", intensity=0.5, age_s=10),
        _alarm("joy1", intensity=0.3, age_s=3, valence="pleasure"),
    ]
    view = build_view("agent", "n1", 0, [], [node], alarms)
    assert [a["id"] for a in view["alarms"]] == ["pain1"]
    assert [e["id"] for e in view["events"]] == ["joy1", "joy-old"]  # newest first
    assert set(view["events"][0]) == {
        "mesh", "node", "id", "source", "intensity", "valence", "reason", "age_s"
    }  # fmt: skip
    # the node's report listed the good news among its unacknowledged signals
    assert view["nodes"][0]["alarms"] == ["pain1", "unknown"]
    assert view["observers"] == []


def test_events_are_bounded() -> None:
    from vsm_edge.agent.web.view import MAX_EVENTS

    alarms = [_alarm(f"j{i}", intensity=0.3, age_s=i, valence="pleasure")
              for i in range(MAX_EVENTS + 5)]  # fmt: skip
    view = build_view("agent", "n1", 0, [], [], alarms)
    assert len(view["events"]) == MAX_EVENTS
    assert view["events"][0]["id"] == "j0"


# -- the read-only server ---------------------------------------------------------------


async def _request(port: int, raw: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data


async def test_read_only_server_routes_methods_and_failures() -> None:
    def broken() -> HttpResponse:
        raise RuntimeError("boom")

    routes = {
        "/ok": lambda: json_response({"ok": True}),
        "/text": lambda: HttpResponse(200, "text/plain", b"hello"),
        "/broken": broken,
    }
    server = ReadOnlyServer(routes, "127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.run)
        ok = await _request(port, b"GET /ok?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")
        assert json.loads(ok.split(b"\r\n\r\n", 1)[1]) == {"ok": True}
        head = await _request(port, b"HEAD /text HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-length: 5" in head.lower()
        assert head.endswith(b"\r\n\r\n")  # no body
        post = await _request(port, b"POST /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        assert post.startswith(b"HTTP/1.1 405")
        assert (await _request(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 404"
        )
        assert (await _request(port, b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 500"
        )
        huge = b"GET /ok HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n"
        assert (await _request(port, huge)).startswith(b"HTTP/1.1 431")
        garbage = await _request(port, b"\x00\x01 not http\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400")
        # still serving after all that
        assert (await _request(port, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 200"
        )
        assert server.errors >= 5
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("path", ["/dashboard", "/"])
def test_dashboard_page_is_self_contained(path: str) -> None:
    from vsm_edge.agent.web.routes import dashboard_response

    page = dashboard_response().body.decode()
    assert page.startswith("<!doctype html>")
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page  # no CDN: devices are often offline
    assert 'fetch("view.json"' in page
    assert ".innerHTML" not in page  # data is written with textContent only


async def test_status_endpoint_serves_extra_routes_and_survives_a_broken_one(
    tmp_path: Any,
) -> None:
    from vsm_edge.agent import Runtime, parse_config
    from vsm_edge.agent.web.status import serve_status

    def broken() -> HttpResponse:
        raise RuntimeError("boom")

    config = parse_config(
        {"node": {"id": "r1", "data_dir": str(tmp_path)}, "status": {"port": 0}}
    )
    runtime = Runtime(config, write_state=False)
    server = serve_status(runtime, config.status, None)
    server.routes["/text"] = lambda: HttpResponse(200, "text/plain", b"hi")
    server.routes["/broken"] = broken
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        port = runtime.status_port
        assert port is not None
        text = await _request(port, b"GET /text HTTP/1.1\r\nHost: x\r\n\r\n")
        assert text.startswith(b"HTTP/1.1 200")
        assert b"content-type: text/plain" in text.lower()
        assert text.endswith(b"\r\n\r\nhi")
        assert (await _request(port, b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
            b"HTTP/1.1 500"
        )
        post = await _request(port, b"POST /text HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert post.startswith(b"HTTP/1.1 405")
        health = await _request(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert health.startswith(b"HTTP/1.1 200")  # still serving
        runtime.stop()


def test_history_keeps_one_point_a_second_bounded_per_node_and_in_nodes() -> None:
    from vsm_edge.agent.web.view import History

    history = History(points=3, interval_ms=1000, max_nodes=2)

    def view(t: int, nodes: list[str]) -> dict[str, Any]:
        return build_view(
            "agent", "a", t, [],
            [{"mesh": "m", "node": n, "self": n == "a", "variety_ratio": t / 1000,
              "lag_ms": {"p50": 5.0}} for n in nodes],
            [],
        )  # fmt: skip

    assert history.record(view(1000, ["a", "b"]))
    assert not history.record(view(1500, ["a", "b"]))  # too soon
    for t in (2000, 3000, 4000):
        assert history.record(view(t, ["a", "b"]))
    out = history.export()
    assert out["m/b"] == {"t": [2000, 3000, 4000], "variety": [2.0, 3.0, 4.0], "lag": [5.0] * 3}
    assert out["m/a"]["lag"] == [None, None, None]  # no lag to itself
    history.record(view(5000, ["c"]))  # a third node evicts the oldest
    assert sorted(history.export()) == ["m/b", "m/c"]

"""What an operator reads: `status` says when it truncates, `alarm ack` takes any unique prefix."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import trio
from support.status_scenario import agent_document
from support.vsm import config, running

from vsm_edge.agent import StatusClientError
from vsm_edge.agent.cli.main import format_status, main
from vsm_edge.agent.mesh.status import NodeStatus
from vsm_edge.agent.web.client import StatusClient


def document_with_active_alarms(n: int) -> NodeStatus:
    doc = agent_document()
    [alarm] = doc["algedonic"]["alarms"]
    doc["algedonic"]["alarms"] = [
        dict(copy.deepcopy(alarm), id=f"{i:032x}", acked=False, source=f"operator.a{i}")
        for i in range(n)
    ]
    doc["algedonic"]["active"] = n
    return NodeStatus.from_json(doc)


def test_status_says_when_it_truncates_the_alarm_list() -> None:
    text = format_status(document_with_active_alarms(30))
    assert "ALARMS (30 active, showing 20)" in text
    assert "(10 more not shown, newest first;" in text
    assert "operator.a19" in text
    assert "operator.a20" not in text


def test_status_does_not_claim_a_cut_when_it_lists_them_all() -> None:
    text = format_status(document_with_active_alarms(3))
    assert "ALARMS (3 active)" in text
    assert "more not shown" not in text


def test_the_count_is_the_nodes_when_the_document_holds_fewer() -> None:
    status = document_with_active_alarms(5)
    doc = status.to_json()
    doc["algedonic"]["active"] = 70  # the document lists the latest 64 alarms only
    text = format_status(NodeStatus.from_json(doc))
    assert "ALARMS (70 active, showing 5)" in text
    assert "(65 more not shown" in text


@pytest.mark.parametrize(
    ("broker", "line"),
    [
        ({"state": "connected", "protocol": "5", "since_ms": 1_764_770_400_000, "reconnects": 2},
         "broker 10.0.0.9:1883  connected since 14:00:00Z (MQTT 5), reconnects 2"),
        ({"state": "reconnecting", "since_ms": 1_764_770_400_000, "attempts": 3,
          "next_attempt_in_s": 0.8, "last_error": "cannot connect: ECONNREFUSED"},
         "broker 10.0.0.9:1883  RECONNECTING since 14:00:00Z (attempt 3, next in 0.8 s): "
         "cannot connect: ECONNREFUSED"),
        ({"state": "refused", "since_ms": None, "attempts": 1, "next_attempt_in_s": 0.1,
          "refused": "Not authorized"},
         "broker 10.0.0.9:1883  REFUSED by the broker: Not authorized (attempt 1, next in 0.1 s)"),
        ({"error": "RuntimeError('boom')"}, "broker: unavailable: RuntimeError('boom')"),
    ],
)  # fmt: skip
def test_status_shows_the_broker_connection(broker: dict[str, object], line: str) -> None:
    doc = agent_document()
    if "error" in broker:
        doc["broker"] = broker
    else:
        doc["broker"].update(address="10.0.0.9:1883", **broker)
    lines = format_status(NodeStatus.from_json(doc)).splitlines()
    assert lines[1] == line


def shortest_unique_prefix(ids: list[str], target: str) -> str:
    for n in range(1, len(target) + 1):
        if sum(i.startswith(target[:n]) for i in ids) == 1:
            return target[:n]
    raise AssertionError("ids are unique")


async def test_alarm_ack_takes_any_unique_prefix_and_names_ambiguous_and_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running(config(status=True, data_dir=tmp_path)) as rt:
        # 17 alarms: two share a first hex digit (pigeonhole); fewer than a storm (20)
        ids = []
        for i in range(17):
            alarm = rt.raise_signal(f"operator.a{i}", 0.5, "test")
            assert alarm is not None
            ids.append(alarm.signal.id)
        endpoint = f"http://127.0.0.1:{rt.status_port}"
        client = StatusClient(endpoint)

        # a short unique prefix, through the command line
        target = ids[0]
        prefix = shortest_unique_prefix(ids, target)
        assert len(prefix) < 6  # shorter than the old route took
        code = await trio.to_thread.run_sync(main, ["alarm", "ack", prefix, "--endpoint", endpoint])
        assert code == 0
        assert capsys.readouterr().out == f"acknowledged {target}\n"
        assert rt.algedonic.alarms[target].acked_at is not None

        # upper case is the same id
        other = ids[1]
        doc = await trio.to_thread.run_sync(client.ack_alarm, other[:8].upper())
        assert doc == {"id": other, "acked": True, "state": "acknowledged", "durable": True}

        # ambiguous: a first digit two ids share
        digit = next(d for d in "0123456789abcdef" if sum(i[0] == d for i in ids) > 1)
        with pytest.raises(StatusClientError, match=f"alarm id prefix {digit} is ambiguous"):
            await trio.to_thread.run_sync(client.ack_alarm, digit)
        code = await trio.to_thread.run_sync(main, ["alarm", "ack", digit, "--endpoint", endpoint])
        assert code == 1
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith(f"vsm-edge alarm: alarm id prefix {digit} is ambiguous: ")
        assert "give more digits" in line
        assert "HTTP" not in line

        # unknown
        unknown = next(
            p for p in (f"{n:06x}" for n in range(1 << 24)) if not any(i.startswith(p) for i in ids)
        )
        code = await trio.to_thread.run_sync(
            main, ["alarm", "ack", unknown, "--endpoint", endpoint]
        )
        assert code == 1
        assert capsys.readouterr().err == (
            f"vsm-edge alarm: no alarm with an id starting {unknown} (at {endpoint})\n"
        )

        # not an id at all
        with pytest.raises(StatusClientError, match="an alarm id is 1-32 hex digits"):
            client.ack_alarm("8ddb-x")
        assert all(rt.algedonic.alarms[i].acked_at is None for i in ids[2:])
